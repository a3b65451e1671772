"""Library noise: diffusers' and transformers' bars and warnings on stderr only with verbose=true,
in the CLI's process and in Ray workers (issue 23)."""

import os
import subprocess
import sys
import warnings

import pytest


@pytest.fixture(scope="module")
def folder_artifact(tmp_path_factory):
    """A router whose backend loads a pipeline folder with ``from_pretrained`` (the path that
    printed diffusers' 'Loading pipeline components' bar and its ``torch_dtype`` warning)."""
    from t2iroute.backends.tiny import save_tiny_pipeline
    from tests.conftest import make_tiny_router

    folder = save_tiny_pipeline(tmp_path_factory.mktemp("pipe") / "tiny-sd")
    spec = dict(type="diffusers", model=str(folder), scheduler="ddim", guidance_scale=5.0, height=64, width=64, steps=2)
    path = tmp_path_factory.mktemp("artifact") / "router"
    make_tiny_router(specs={"fast": spec, "mid": spec, "slow": spec}).save(path)
    return path


@pytest.fixture
def restore_quiet(monkeypatch):
    """Undo what quiet_libraries does to this process: its flag, environment, warning filters,
    library switches and root-logger filters."""
    import logging
    import sys

    from t2iroute import quiet

    for k in quiet._ENV:
        monkeypatch.setenv(k, os.environ[k]) if k in os.environ else monkeypatch.delenv(k, raising=False)
    saved, filters = quiet._VERBOSE["verbose"], list(logging.getLogger().filters)
    with warnings.catch_warnings():
        yield quiet
    quiet._VERBOSE["verbose"] = saved
    logging.getLogger().filters[:] = filters
    for name in ("diffusers", "transformers"):
        if name in sys.modules:
            mod = __import__(f"{name}.utils.logging", fromlist=["logging"])
            mod.enable_progress_bar()
            mod.set_verbosity_warning()
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import enable_progress_bars

        enable_progress_bars()


def _generate(artifact, out, *extra):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    for k in ("HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY"):
        env.pop(k, None)  # what the user did not set
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "t2iroute.cli",
            "generate",
            "a red circle",
            f"artifact={artifact}",
            f"out={out}",
            "backend=fast",
            *extra,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_generate_prints_no_library_bars_or_warnings_without_verbose(folder_artifact, tmp_path):
    quiet = _generate(folder_artifact, tmp_path / "a.png")
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert (tmp_path / "a.png").is_file()
    assert "Loading pipeline components" not in quiet.stderr
    assert "torch_dtype" not in quiet.stderr and "FutureWarning" not in quiet.stderr
    assert "\x1b[" not in quiet.stderr


@pytest.mark.heavy
def test_generate_with_verbose_shows_the_loading_bar(folder_artifact, tmp_path):
    loud = _generate(folder_artifact, tmp_path / "b.png", "verbose=true")
    assert loud.returncode == 0, loud.stderr[-2000:]
    assert "Loading pipeline components" in loud.stderr  # the bar prints on a pipe too: verbose brings it back
    assert "torch_dtype" not in loud.stderr  # dtype= is passed where diffusers takes it: no deprecation at all


def test_the_loading_bar_follows_the_verbose_flag_in_process(restore_quiet, tmp_path, capfd):
    from t2iroute.backends import diffusers_backend as db
    from t2iroute.backends.tiny import save_tiny_pipeline

    folder = str(save_tiny_pipeline(tmp_path / "tiny-sd"))
    seen = {}
    for verbose in (False, True):
        restore_quiet.quiet_libraries(verbose)
        capfd.readouterr()
        try:
            db._load_pipeline(folder, "float32", "cpu", None)
        finally:
            db.unload_pipeline(folder)
        seen[verbose] = "Loading pipeline components" in capfd.readouterr().err
    assert seen == {False: False, True: True}


def test_loading_a_pipeline_folder_raises_no_deprecation_warning(tmp_path):
    from t2iroute.backends import diffusers_backend as db
    from t2iroute.backends.tiny import save_tiny_pipeline

    folder = str(save_tiny_pipeline(tmp_path / "tiny-sd"))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            db._load_pipeline(folder, "float32", "cpu", None)
        assert not [w for w in caught if "torch_dtype" in str(w.message)], [str(w.message) for w in caught]
    finally:
        db.unload_pipeline(folder)


def test_quiet_libraries_switches_the_loaded_libraries_and_keeps_the_users_environment(restore_quiet, monkeypatch):
    import diffusers.utils.logging as dlog

    quiet = restore_quiet
    monkeypatch.setenv("TRANSFORMERS_VERBOSITY", "info")  # the user's own choice stays
    monkeypatch.delenv("DIFFUSERS_VERBOSITY", raising=False)
    quiet.quiet_libraries(False)
    assert not dlog.is_progress_bar_enabled() and quiet.is_verbose() is False
    assert os.environ["DIFFUSERS_VERBOSITY"] == "error" and os.environ["TRANSFORMERS_VERBOSITY"] == "info"
    quiet.quiet_libraries(True)
    assert dlog.is_progress_bar_enabled() and quiet.is_verbose() is True


def test_ray_workers_get_the_drivers_flag_and_no_colour_codes_off_a_terminal(restore_quiet, monkeypatch):
    """The sweep actor applies the flag it is given (called here in process: no cluster), a driver
    that never set one gives its workers quiet, and Ray's colour prefixes are off when stderr is
    not a terminal."""
    from t2iroute import cluster as common
    from t2iroute.sweeps.ray import SweepWorker
    from tests.conftest import TINY_SPECS

    quiet = restore_quiet
    quiet._VERBOSE["verbose"] = None
    assert common.worker_verbose() is False and common.worker_verbose(True) is True
    quiet._VERBOSE["verbose"] = True
    assert common.worker_verbose() is True
    worker = SweepWorker({"fast": TINY_SPECS["fast"]}, {"type": "testbed_check"}, 1, False)
    assert worker._error is None and quiet.is_verbose() is False
    monkeypatch.delenv("RAY_COLOR_PREFIX", raising=False)
    monkeypatch.delenv("RAY_DEDUP_LOGS", raising=False)
    monkeypatch.setattr(common, "_is_terminal", lambda: False)
    try:
        common.import_ray()
    except Exception:  # noqa: BLE001 -- Ray not installed: the environment is set before the import
        pass
    assert os.environ["RAY_COLOR_PREFIX"] == "0" and os.environ["RAY_DEDUP_LOGS"] == "0"


def test_a_ray_worker_drops_open_clips_random_weights_notice_but_not_other_warnings(restore_quiet, caplog):
    import logging

    restore_quiet.quiet_libraries(False, worker=True)
    with caplog.at_level(logging.WARNING):
        logging.warning("No pretrained weights loaded for model 'x'. Model initialized randomly.")
        logging.warning("something else")
    assert [r.getMessage() for r in caplog.records] == ["something else"]
