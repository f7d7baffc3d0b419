"""ReducedModel.predict: pre-split word lists are words, never their string form; other input is refused."""

import numpy as np
import pandas as pd
import pytest

from raydund.errors import UserError
from raydund.transfer.reduced import ReducedModel, save_reduced


@pytest.fixture(scope="module")
def reduced(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("reduced") / "model"
    rng = np.random.default_rng(0)
    neurons = np.array([1, 5, 16 + 3, 16 + 9])  # two of layer 0, two of layer 1 (hidden 16)
    save_reduced(folder, tiny_model_dir("bert"), 1, neurons, rng.normal(size=(4, 3)), rng.normal(size=3),
                 {"unit": "word", "aggregation": "last", "classes": ["DT", "NN", "VB"], "task": "pos"})
    return ReducedModel.from_folder(folder)


def test_pre_split_words_equal_the_text(reduced):
    text = reduced.predict(None, "the dog barks")
    assert len(text) == 1 and len(text[0]) == 3
    assert reduced.predict(None, [["the", "dog", "barks"]]) == text
    assert reduced.predict(None, [("the", "dog", "barks"), "the fox"]) == [text[0], reduced.predict(None, "the fox")[0]]
    frame = pd.DataFrame({"text": [["the", "dog", "barks"], ["the", "fox"]]})
    assert reduced.predict(None, frame) == reduced.predict(None, ["the dog barks", "the fox"])
    assert reduced.predict(None, pd.DataFrame({"text": [np.array(["the", "dog", "barks"])]})) == text


@pytest.mark.parametrize("bad,match", [
    ([["the", 3]], "list of non-empty strings"),
    ([["the", ""]], "list of non-empty strings"),
    ([None], "string or a list of words, got NoneType"),
    (pd.DataFrame({"text": [1.5]}), "string or a list of words, got float"),
    ({"text": "a"}, "give a list of sentences"),
])
def test_other_input_is_refused(reduced, bad, match):
    with pytest.raises(UserError, match=match):
        reduced.predict(None, bad)
