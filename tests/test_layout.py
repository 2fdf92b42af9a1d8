"""The house rules: which package may import which, and what importing the light ones costs."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("anchor.speech", "anchor.face", "anchor.listen", "anchor.news", "anchor.responders")
TOOLS = ("anchor.bench", "anchor.train")
ABOVE_CORE = ("anchor.app", "anchor.testing", *TOOLS, *STAGES)

# Package -> what no module in it may import, anywhere in the module (lazy imports count too).
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "engines": ("anchor", "streams"),
    "anchor.core": ("streams", *ABOVE_CORE),
    "streams": ("engines", *ABOVE_CORE),
    **{stage: ("streams", "anchor.app", "anchor.testing", *TOOLS) for stage in STAGES},
    "anchor.testing": ("streams", "anchor.app", *TOOLS),
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, *, top_level: bool = False) -> list[tuple[int, str]]:
    """``(line, module)`` of each absolute import; ``top_level``: only those run when the module loads."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in tree.body if top_level else ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _tool_module(module: str) -> bool:
    """The application starts without the tools' extras: it loads only their parsers, the rest on use."""
    return any(_within(module, tool) for tool in TOOLS) and not module.endswith(".cli")


def test_imports_point_one_way() -> None:
    broken = []
    for path in sorted(
        [*ROOT.glob("anchor/**/*.py"), *ROOT.glob("engines/**/*.py"), *ROOT.glob("streams/**/*.py")]
    ):
        module = _module_name(path)
        for line, imported in _imports(path):
            for package, forbidden in FORBIDDEN.items():
                if _within(module, package) and any(_within(imported, f) for f in forbidden):
                    broken.append(f"{path.relative_to(ROOT)}:{line} ({package}) imports {imported}")
        for line, imported in _imports(path, top_level=True) if _within(module, "anchor.app") else []:
            if _tool_module(imported):
                broken.append(
                    f"{path.relative_to(ROOT)}:{line} (anchor.app) imports the tool module {imported}"
                )
    assert not broken, "imports against the layering:\n" + "\n".join(broken)


def _loaded_after(statement: str, watch: tuple[str, ...]) -> list[str]:
    code = f"import sys\n{statement}\nprint(' '.join(m for m in {watch!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return out.stdout.split()


ML_STACK = ("torch", "onnxruntime", "onnx", "ctranslate2", "cv2", "engines.hub", "engines.registry")


def test_the_network_edges_import_without_the_ml_stack() -> None:
    modules = sorted(_module_name(p) for p in ROOT.glob("streams/*.py"))
    assert "streams.server" in modules and "streams.mqtt" in modules
    assert _loaded_after("\n".join(f"import {m}" for m in modules), ML_STACK) == []


def test_the_runtime_frames_and_commands_import_without_the_ml_stack() -> None:
    statement = "import anchor.core.frames, anchor.core.commands, anchor.core.config, anchor.core.aio"
    assert _loaded_after(statement, ML_STACK) == []


@pytest.mark.parametrize(
    "extra", ["tqdm", "matplotlib", "parselmouth", "anchor.train.loop", "anchor.bench.tts"]
)
def test_the_command_line_starts_without_the_tools_extras(extra: str) -> None:
    assert _loaded_after("import anchor.app.cli; anchor.app.cli.build_parser()", (extra, "torch")) == []
