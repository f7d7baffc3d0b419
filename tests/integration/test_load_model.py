"""raydund.load_model resolves raydund's MLflow store from the settings, whatever MLflow was pointed at."""

import pytest


def test_load_model_reads_raydunds_store(settings, tmp_path, monkeypatch):
    import mlflow
    from mlflow.pyfunc import PythonModel

    import raydund
    from raydund import tracking

    class Upper(PythonModel):
        def predict(self, context, model_input, params=None):
            return [str(t).upper() for t in model_input]

    tracking.configure(settings)
    experiment = tracking.ensure_experiment(settings, "raydund/test/load")  # artifacts under RAYDUND_HOME
    with mlflow.start_run(experiment_id=experiment):
        mlflow.pyfunc.log_model(name="m", python_model=Upper(), registered_model_name="raydund-upper")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/elsewhere.db")  # what a user's shell might point at
    monkeypatch.setenv("RAYDUND_HOME", str(settings.home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert raydund.load_model("raydund-upper").predict(["ab"]) == ["AB"]
    assert raydund.load_model("models:/raydund-upper/1", settings).predict(["c"]) == ["C"]
    with pytest.raises(Exception, match="raydund-nope"):
        raydund.load_model("raydund-nope")
