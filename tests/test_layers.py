"""The house's import rules (design.md section 2), read from the source: imports flow down the layers, nothing
below ``stages/`` imports a stage, ``envs``/``data`` know nothing of models, and no public library function
takes the experiment config."""
import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "diwa_jax")

# Lowest first; a module may import its own layer and the layers below it. Keys are module names or the
# packages they start with (the longest match wins).
LAYERS = (
    ("diwa_jax", "diwa_jax.atomic", "diwa_jax.errors", "diwa_jax.types", "diwa_jax.logging", "diwa_jax.checkpoint",
     "diwa_jax.training", "diwa_jax.mesh"),  # infrastructure
    ("diwa_jax.envs", "diwa_jax.data"),
    ("diwa_jax.config",),  # rules and derived values (it knows the task list)
    ("diwa_jax.world_model", "diwa_jax.policy", "diwa_jax.reward"),  # models
    # fine-tuning, the closed loop and what compares the two
    ("diwa_jax.finetune", "diwa_jax.evaluate", "diwa_jax.transfer", "diwa_jax.videos", "diwa_jax.distributed"),
    ("diwa_jax.specs",),  # every library spec, built from the config
    ("diwa_jax.artifacts",),  # the workdir and typed loaders
    ("diwa_jax.stages", "diwa_jax.bench"),  # runners and the benchmark's entry point
    ("diwa_jax.pipeline",),
    ("diwa_jax.sweep",),  # one pipeline run per point of a grid
    ("launch",),
)
# Where the experiment config is read: everything else is a library and takes specs, params and arrays.
CONFIG_READERS = ("diwa_jax.config", "diwa_jax.specs", "diwa_jax.artifacts", "diwa_jax.stages", "diwa_jax.pipeline",
                  "diwa_jax.sweep", "diwa_jax.bench", "launch")
MODEL_PACKAGES = ("diwa_jax.world_model", "diwa_jax.policy", "diwa_jax.reward", "diwa_jax.finetune")
STAGE_USERS = ("diwa_jax.stages", "diwa_jax.pipeline", "diwa_jax.sweep", "launch")


def _modules() -> dict[str, str]:
    found = {"launch": os.path.join(REPO, "launch.py")}
    for root, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                rel = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
                found[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = path
    return found


def _imports(path: str, module: str) -> set[str]:
    """Every diwa_jax module ``path`` imports, at any depth of its code (``from X import y`` counts ``X.y`` when
    that is a module, else ``X``)."""
    modules = _modules()
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            for a in node.names:
                out.add(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base)
    return {m for m in out if m == "launch" or m.startswith("diwa_jax")}


def _layer(module: str) -> int:
    best, level = -1, None
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best:
                best, level = len(name), i
    assert level is not None, f"{module} is in no layer of tests/test_layers.py: place it"
    return level


def _inside(module: str, packages) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def _edges():
    return [(m, imported) for m, path in sorted(_modules().items()) for imported in sorted(_imports(path, m))]


def test_every_module_has_a_layer_and_imports_flow_down():
    upward = [f"{m} (layer {_layer(m)}) imports {i} (layer {_layer(i)})" for m, i in _edges() if _layer(i) > _layer(m)]
    assert not upward, "\n".join(upward)


def test_nothing_below_the_stages_imports_a_stage():
    wrong = [f"{m} imports {i}" for m, i in _edges() if _inside(i, ("diwa_jax.stages",)) and i != "diwa_jax.stages"
             and not _inside(m, STAGE_USERS)]
    assert not wrong, "\n".join(wrong)


def test_envs_and_data_know_nothing_of_models():
    wrong = [f"{m} imports {i}" for m, i in _edges()
             if _inside(m, ("diwa_jax.envs", "diwa_jax.data")) and _inside(i, MODEL_PACKAGES)]
    assert not wrong, "\n".join(wrong)


def _config_parameters(path: str) -> list[str]:
    """``function(param)`` for every public function (and method) of ``path`` with a parameter named like the
    experiment config or a section of it (``config``, ``cfg``, ``cfg_*``, ``*_config``)."""
    found = []
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
            args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
            found += [f"{node.name}({a.arg})" for a in args
                      if a.arg in ("config", "cfg") or a.arg.startswith("cfg_") or a.arg.endswith("_config")]
    return found


def test_no_library_function_takes_the_experiment_config():
    wrong = [f"{m}.{f}" for m, path in sorted(_modules().items()) if not _inside(m, CONFIG_READERS)
             for f in _config_parameters(path)]
    assert not wrong, "library functions taking the config (give them a spec from diwa_jax/specs.py):\n" + \
        "\n".join(wrong)


def test_the_config_check_catches_a_config_parameter(tmp_path):
    path = tmp_path / "lib.py"
    path.write_text("def run(spec, cfg_policy):\n    pass\n\ndef _private(config):\n    pass\n"
                    "class A:\n    def make(self, config):\n        pass\n")
    assert _config_parameters(str(path)) == ["run(cfg_policy)", "make(config)"]


@pytest.mark.parametrize("source, rule", [
    ("from diwa_jax.stages import finetune\n", "stage"),
    ("from diwa_jax.world_model import model\n", "model"),
    ("from diwa_jax import pipeline\n", "upward"),
])
def test_the_rules_catch_a_wrong_import(tmp_path, source, rule):
    """A data module with each kind of wrong import breaks the rule it should."""
    path = tmp_path / "bad.py"
    path.write_text(source)
    imported = _imports(str(path), "diwa_jax.data.bad")
    if rule == "stage":
        assert any(_inside(i, ("diwa_jax.stages",)) for i in imported)
    elif rule == "model":
        assert any(_inside(i, MODEL_PACKAGES) for i in imported)
    else:
        assert any(_layer(i) > _layer("diwa_jax.data.bad") for i in imported)
