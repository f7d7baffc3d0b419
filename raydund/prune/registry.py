"""A pruned model as an MLflow pyfunc model that generates text.

``mlflow.pyfunc.load_model(uri).predict(["The capital of France is"])`` returns one string
per prompt: the prompt's greedy continuation (``max_new_tokens`` new tokens, decoded
without special tokens; the prompt itself is not repeated).
"""

from __future__ import annotations

from pathlib import Path

import mlflow.pyfunc


class PrunedGenerator(mlflow.pyfunc.PythonModel):
    """Greedy text generation with a saved (pruned) ``transformers`` causal LM."""

    def load_context(self, context):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder = context.artifacts["model"]
        self.tok = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModelForCausalLM.from_pretrained(folder).eval()
        self.max_new_tokens = int((context.model_config or {}).get("max_new_tokens", 20))

    def predict(self, context, model_input: list[str], params=None) -> list[str]:
        import torch

        prompts = _prompts(model_input)
        new = int((params or {}).get("max_new_tokens", self.max_new_tokens))
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        out = []
        with torch.no_grad():
            for p in prompts:  # one at a time: no left-padding subtleties
                enc = self.tok(p, return_tensors="pt")
                ids = self.model.generate(**enc, max_new_tokens=new, do_sample=False, pad_token_id=pad)
                out.append(self.tok.decode(ids[0, enc.input_ids.shape[1]:], skip_special_tokens=True))
        return out


def _prompts(model_input) -> list[str]:
    if isinstance(model_input, str):
        return [model_input]
    if hasattr(model_input, "iloc"):  # a DataFrame: its first column
        return [str(x) for x in model_input.iloc[:, 0]]
    return [str(x) for x in model_input]


def log_pruned(mlflow, folder: str | Path, name: str, max_new_tokens: int = 20, registered: bool = True):
    """Log ``folder`` (a saved pruned model) as a pyfunc model in the active run; register it as ``name``."""
    return mlflow.pyfunc.log_model(
        name="model", python_model=PrunedGenerator(), artifacts={"model": str(folder)},
        model_config={"max_new_tokens": max_new_tokens}, registered_model_name=name if registered else None,
        pip_requirements=["transformers", "torch"])


def registered_name(model: str, corpus: str, n: int) -> str:
    """Registry name of the best pruned model with ``n`` blocks dropped."""
    return f"raydund-prune-{model}-{corpus}-minus{n}"
