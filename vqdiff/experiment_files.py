"""Experiments built on other experiments: load a sibling config file's get_config() by name."""
import importlib.util
import pathlib


def sibling_config(this_file: str, name: str, *variant: str):
    """`get_config(*variant)` of experiments/<name>.py, the file beside `this_file` (pass `__file__`)."""
    path = pathlib.Path(this_file).resolve().with_name(f"{name}.py")
    if not path.exists():
        raise FileNotFoundError(f"experiment {name!r} not found: no {path}")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(*variant)
