"""The built wheel works outside the checkout: shipped catalog, a user catalog, ingest -> extract -> similarity."""

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import tiny_models
from processes import base_env

REPO = Path(__file__).resolve().parents[2]

WORDS = ["the quick brown fox jumped over the lazy dog .".split(),
         "stocks fell sharply in heavy trading on monday .".split(),
         "unbelievable tokenization works , really !".split()] * 4


def _conll(path: Path) -> None:
    """A tiny CoNLL-2000 file: ``word POS chunk`` lines, a blank line after each sentence."""
    lines = []
    for sentence in WORDS:
        lines += [f"{w} {'NN' if i % 2 else 'DT'} {'B-NP' if i % 2 else 'I-NP'}" for i, w in enumerate(sentence)]
        lines.append("")
    path.write_text("\n".join(lines) + "\n")


def _venv_with_wheel(tmp: Path) -> Path:
    """A fresh venv holding only the raydund wheel; the current venv's packages importable by a path line."""
    wheels = tmp / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheels), str(REPO)], check=True, cwd=tmp, capture_output=True)
    (wheel,) = wheels.glob("raydund-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q",
                    str(wheel)], check=True, cwd=tmp, capture_output=True)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # a plain path line: the checkout's editable-install finder (an import line in a .pth there) never runs
    (Path(site) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def _run(venv: Path, args: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    out = subprocess.run([str(venv / "bin" / "raydund"), *args], env=env, cwd=cwd, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, (args, out.stdout[-2000:], out.stderr[-3000:])
    return out


def test_installed_wheel_runs_the_pipeline_outside_the_checkout(tmp_path):
    venv = _venv_with_wheel(tmp_path)
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import raydund; print(raydund.__file__)"],
                           cwd=work, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).resolve().is_relative_to(venv.resolve()), where  # the wheel, not the checkout

    catalog = tmp_path / "my-catalog"
    (catalog / "corpora").mkdir(parents=True)
    (catalog / "corpora" / "toy_chunks.yaml").write_text(
        "description: a user corpus\nformat: conll2000\nlevel: token\nlabels: [pos, chunk]\n"
        "splits:\n  train: {path: toy/train.txt}\n")
    mirror = tmp_path / "data"
    (mirror / "toy").mkdir(parents=True)
    _conll(mirror / "toy" / "train.txt")
    model = tiny_models.build("bert", tmp_path / "models" / "tinybert")

    env = {**base_env(), "RAYDUND_HOME": str(tmp_path / "home"), "RAYDUND_CATALOG_PATH": str(catalog),
           "RAYDUND_DATA_MIRROR": str(mirror), "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1",
           "PATH": f"{venv / 'bin'}:{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)

    listing = _run(venv, ["catalog"], env, work).stdout
    assert "conll2000" in listing and "minilm" in listing  # shipped in the wheel
    assert "toy_chunks" in listing and "a user corpus" in listing  # the user's folder

    ingest = _run(venv, ["ingest", "toy_chunks"], env, work).stdout
    assert f"toy_chunks/train: {len(WORDS)} sentences, {sum(map(len, WORDS))} tokens" in ingest
    _run(venv, ["extract", "--model", str(model), "--corpus", "toy_chunks", "--split", "train"], env, work)
    similarity = _run(venv, ["similarity", "--model", "tinybert", "--corpus", "toy_chunks", "--split", "train"],
                      env, work).stdout
    assert f"tinybert toy_chunks/train: {sum(map(len, WORDS))} tokens x 48 neurons" in similarity

    from raydund.config import Settings
    from raydund.lake import Lake

    lake = Lake(Settings.from_env({"RAYDUND_HOME": str(tmp_path / "home")}))
    activations = lake.scan("activations").collect()
    assert activations.height == 3 * sum(map(len, WORDS))
    assert set(activations["model"]) == {"tinybert"} and set(activations["corpus"]) == {"toy_chunks"}
    cka = lake.scan("layer_similarity").collect()
    assert cka.height > 0 and set(cka["model"]) == {"tinybert"}
    assert not list(work.iterdir())  # nothing written into the working directory
