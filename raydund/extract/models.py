"""Which model: names, catalog entries, local folders, hub ids and registry URIs, resolved and loaded.

:func:`resolve_model` turns what a user typed into a :class:`ModelSpec` (a lake name and
where the weights are); :func:`load_model` loads it with the tokenizer extraction needs, and
:func:`load_tokenizer` is the one place a tokenizer is loaded (extraction, fine-tuning).
No Ray here.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import logging
import os
from pathlib import Path

from raydund.config import load_yaml
from raydund.errors import UserError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A model to load: its lake name, where its weights are, and which revision.

    Attributes
    ----------
    name : str
        Name used in the lake's ``model`` column (``minilm``, ``bert-base-cased``).
    source : str
        Local folder or Hugging Face hub id.
    revision : str or None
        Hub revision (commit or tag); ``None`` for local folders.
    gguf_file : str or None
        A GGUF file inside the ``source`` folder (llama.cpp weights, dequantised to float32
        on load); ``None`` for Hugging Face folders and hub ids.
    """

    name: str
    source: str
    revision: str | None = None
    gguf_file: str | None = None


#: Prefix of MLflow model-registry URIs (``models:/name/1``, ``models:/name@alias``, ``models:/name/latest``).
REGISTRY_PREFIX = "models:/"
#: Tag on a registered version naming the lake ``model`` of its activations (set by ``raydund finetune``).
LAKE_MODEL_TAG = "raydund.lake_model"


def resolve_model(name: str, settings=None, lake_name: str | None = None) -> ModelSpec:
    """Find a model by catalog name (``catalog/models/<name>.yaml``), local folder, hub id or registry URI.

    A local folder is named by ``lake_name`` when given, else by the catalog entry whose
    weights it holds, else by its config's ``_name_or_path`` (the last part of a hub id),
    else by the folder itself. A name that the catalog gives a different model is refused:
    two sources never share one lake ``model``.

    Parameters
    ----------
    name : str
        ``minilm``, ``/abs/folder``, ``bert-base-cased``, or an MLflow registry URI
        ``models:/raydund-minilm-sst2/1`` (also ``@alias`` and ``/latest``).
    settings : Settings, optional
        Where the MLflow registry and the local model cache are (registry URIs only;
        default: :meth:`Settings.from_env`).
    lake_name : str, optional
        The name to store the activations under (``raydund extract --name``).

    Raises
    ------
    UserError
        Unknown model, or a name the catalog gives another source.
    """
    name = str(name)
    if name.startswith(REGISTRY_PREFIX):
        spec = resolve_registered(name, settings)
    elif Path(name).is_file() and name.endswith(".gguf"):
        path = Path(name).resolve()
        spec = ModelSpec(name=_local_name(path.parent, path.name), source=str(path.parent), gguf_file=path.name)
    elif Path(name).is_dir():
        source = str(Path(name).resolve())
        spec = ModelSpec(name=_local_name(Path(source)), source=source, gguf_file=_lone_gguf(Path(source)))
    else:
        try:
            spec = _catalog_spec(load_yaml("models", name))
        except UserError:
            if "/" not in name and "-" not in name:
                raise
            spec = ModelSpec(name=name.replace("/", "--"), source=name)  # a hub id: bert-base-cased, org/model
    if lake_name is not None:
        spec = dataclasses.replace(spec, name=str(lake_name))
    _check_catalog_collision(spec)
    return spec


def _catalog_spec(entry: dict) -> ModelSpec:
    """The model a catalog entry declares: a folder inside an installed package, or a hub id."""
    source = entry["source"]
    if "package" in source:
        try:
            root = importlib.resources.files(source["package"])
        except ModuleNotFoundError:
            raise UserError(f"model {entry['name']!r} ships in the Python package {source['package']!r}, "
                            f"which is not installed") from None
        path = str(Path(str(root)) / source.get("path", ""))
        return ModelSpec(name=entry["name"], source=path, revision=entry.get("revision"), gguf_file=source.get("gguf"))
    return ModelSpec(name=entry["name"], source=source["hub"], revision=entry.get("revision"))


def _catalog_source(name: str) -> str | None:
    """Where the catalog model ``name`` lives (resolved folder or hub id); None when there is none."""
    from raydund.config import catalog_entries

    if name not in catalog_entries("models"):
        return None
    try:
        source = _catalog_spec(load_yaml("models", name)).source
    except UserError:  # its package is not installed: it can be nowhere on this machine
        return None
    return str(Path(source).resolve()) if Path(source).is_dir() else source


def source_spec(name: str, source: str, revision: str | None = None) -> ModelSpec:
    """The spec of a source an earlier job recorded (``model_source``): a folder of one GGUF file gets it."""
    gguf = _lone_gguf(Path(source)) if Path(source).is_dir() else None
    return ModelSpec(name=name, source=source, revision=revision, gguf_file=gguf)


def _lone_gguf(folder: Path) -> str | None:
    """The GGUF file of a folder that holds no ``config.json`` and exactly one ``*.gguf``; else None."""
    if (folder / "config.json").is_file():
        return None
    found = sorted(p.name for p in folder.glob("*.gguf"))
    if len(found) > 1:
        raise UserError(f"folder {folder} holds {len(found)} GGUF files ({', '.join(found)}); name the file")
    return found[0] if found else None


def _local_name(folder: Path, gguf_file: str | None = None) -> str:
    """A local model folder's lake name: its catalog name, else its config's model id, else the folder name.

    A GGUF file outside the catalog is named after the file (without ``.gguf``).
    """
    from raydund.config import catalog_entries

    for entry in catalog_entries("models"):
        if _catalog_source(entry) == str(folder):
            return entry
    if gguf_file is not None or _lone_gguf(folder):
        return (gguf_file or _lone_gguf(folder)).removesuffix(".gguf")
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    origin = str(config.get("_name_or_path") or "").strip()
    # a hub id (org/model) names the model; a filesystem path it was saved from does not
    if origin and not origin.startswith((".", "/", "~")) and not Path(origin).is_absolute():
        return origin.rstrip("/").rsplit("/", 1)[-1]
    return folder.name


def _check_catalog_collision(spec: ModelSpec) -> None:
    """Refuse a lake name that the catalog gives a model from another source."""
    other = _catalog_source(spec.name)
    if other is None:
        return
    mine = str(Path(spec.source).resolve()) if Path(spec.source).is_dir() else spec.source
    if other != mine:
        raise UserError(f"model name {spec.name!r} is the catalog's name for {other}, not {spec.source}; "
                        f"choose another name with --name")


def _parse_registry_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/name/3`` -> (name, "3", None); ``models:/name@champion`` -> (name, None, "champion")."""
    rest = uri[len(REGISTRY_PREFIX):].strip("/")
    if "@" in rest and "/" not in rest:
        model, alias = rest.split("@", 1)
        if model and alias:
            return model, None, alias
    elif rest.count("/") == 1:
        model, version = rest.split("/")
        if model and (version.isdigit() or version == "latest"):
            return model, version, None
    raise UserError(f"cannot read model URI {uri!r}; use models:/NAME/VERSION, models:/NAME/latest "
                    f"or models:/NAME@ALIAS")


def resolve_registered(uri: str, settings=None) -> ModelSpec:
    """A registered MLflow model version as a local folder (downloaded once) and its lake name.

    The artifacts of the version are copied to ``$RAYDUND_HOME/models/<name>/<version>``
    the first time (a temporary folder renamed into place, so a half download is never
    used) and read from there afterwards. The lake name is the version's
    ``raydund.lake_model`` tag (``minilm-ft-sst2-v1``), else ``<name>-v<version>``.

    Raises
    ------
    UserError
        A malformed URI, or no such registered model, version or alias.
    """
    from mlflow.exceptions import MlflowException

    from raydund import tracking
    from raydund.config import Settings

    settings = settings or Settings.from_env()
    model, version, alias = _parse_registry_uri(uri)
    mlflow = tracking.configure(settings)
    client = mlflow.MlflowClient()
    try:
        if alias is not None:
            mv = client.get_model_version_by_alias(model, alias)
        elif version == "latest":
            mv = tracking.latest_valid_version(client, model)
        else:
            mv = client.get_model_version(model, version)
    except MlflowException as exc:
        raise UserError(f"no registered model version for {uri!r} in {tracking.redact(settings.tracking_uri)}: "
                        f"{str(exc).splitlines()[0]}") from None
    cache = settings.home / "models" / model / str(mv.version)
    if not (cache / "config.json").is_file():
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial = cache.parent / f".{mv.version}.partial-{os.getpid()}"
        if partial.exists():
            import shutil

            shutil.rmtree(partial)  # left by a killed download of this process id
        log.info("downloading %s (version %s) to %s", model, mv.version, cache)
        mlflow.artifacts.download_artifacts(artifact_uri=f"{REGISTRY_PREFIX}{model}/{mv.version}",
                                            dst_path=str(partial))
        if not (partial / "config.json").is_file():
            raise UserError(f"registered model {model!r} version {mv.version} holds no Hugging Face model folder")
        try:
            partial.rename(cache)
        except OSError:  # another process finished the same download first
            if not (cache / "config.json").is_file():
                raise
            import shutil

            shutil.rmtree(partial, ignore_errors=True)
    lake_name = mv.tags.get(LAKE_MODEL_TAG) or f"{model}-v{mv.version}"
    return ModelSpec(name=lake_name, source=str(cache))


def load_tokenizer(source: str, revision: str | None = None, gguf_file: str | None = None,
                   natural_text: bool = False):
    """The fast tokenizer of ``source``; the one way raydund loads one.

    By default the tokenizer must take pre-split words (encoders, fine-tuning): byte-level
    BPE tokenizers (RoBERTa, GPT-2) are reloaded with ``add_prefix_space=True`` so that
    pre-split words can be encoded. With ``natural_text`` (decoder models: sentences are
    tokenised as text, :mod:`raydund.extract.text`) it is loaded as the model ships it.
    Tokenizers without a pad token pad with their end-of-text token.

    Parameters
    ----------
    source : str
        Local folder or Hugging Face hub id.
    revision : str, optional
        Hub revision (commit or tag).
    gguf_file : str, optional
        The GGUF file in ``source`` that holds the tokenizer.
    natural_text : bool
        Load the tokenizer as shipped (no ``add_prefix_space`` reload).

    Returns
    -------
    transformers.PreTrainedTokenizerBase
        A fast tokenizer where the model has one (``is_fast``; :func:`load_model` requires it).

    Raises
    ------
    OSError
        ``source`` holds no tokenizer (as ``from_pretrained`` raises it).
    """
    from transformers import AutoTokenizer

    kwargs = {"revision": revision} if revision else {}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    tokenizer = AutoTokenizer.from_pretrained(source, use_fast=True, **kwargs)
    if not natural_text:
        try:
            tokenizer(["a", "b"], is_split_into_words=True)
        except (ValueError, AssertionError):
            tokenizer = AutoTokenizer.from_pretrained(source, use_fast=True, add_prefix_space=True, **kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(spec: ModelSpec, device: str = "cpu"):
    """Load ``AutoModel`` (all hidden states) and its fast tokenizer (:func:`load_tokenizer`).

    Decoder LLMs (:func:`~raydund.extract.text.is_decoder`) load as their base model
    (``LlamaModel``, not ``LlamaForCausalLM``: hidden states, no LM head), with their
    tokenizer as shipped and right padding. On a GPU a model keeps the dtype it was saved
    in (float16/bfloat16 stay so); on the CPU it runs in float32. GGUF weights are
    dequantised to float32 by ``transformers``.

    Raises
    ------
    UserError
        The model or its tokenizer cannot be loaded, an architecture ``transformers``
        cannot load (or an encoder-decoder), or the tokenizer is not a fast one (word
        alignment needs ``word_ids()`` or offsets).
    """
    import torch
    from transformers import AutoConfig, AutoModel

    from raydund.extract.text import is_decoder

    kwargs = {"revision": spec.revision} if spec.revision else {}
    if spec.gguf_file:
        kwargs["gguf_file"] = spec.gguf_file
    try:
        config = AutoConfig.from_pretrained(spec.source, **kwargs)
        if getattr(config, "is_encoder_decoder", False):
            raise UserError(f"model {spec.source!r} is an encoder-decoder ({config.model_type}); raydund "
                            "reads encoders and decoder-only models")
        decoder = is_decoder(config)
        tokenizer = load_tokenizer(spec.source, spec.revision, spec.gguf_file, natural_text=decoder)
        dtype = "auto" if str(device).startswith("cuda") else torch.float32
        model = AutoModel.from_pretrained(spec.source, output_hidden_states=True, dtype=dtype, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"cannot load model {spec.source!r}: {str(exc).splitlines()[0]}") from None
    if not tokenizer.is_fast:
        raise UserError(f"model {spec.source!r} has no fast tokenizer; word alignment needs word_ids()")
    if decoder:
        tokenizer.padding_side = "right"  # positions of real tokens match an unpadded run
    model.eval().to(device)
    return model, tokenizer
