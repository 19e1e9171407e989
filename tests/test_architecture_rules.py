"""The package's layering, checked on the source: a model file imports only `models/base` among the models (models
are peers; what they share lives in `layers/`), layers never import models, the geometry core imports neither.
Plus the promises that made the move safe: exports and checkpoints of earlier versions (every architecture, saved
before the mends) load with identical outputs, and an export with one flipped byte is refused with one clear line.
"""
import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import bytropix.models.zoo  # noqa: F401  (registers every architecture)
from bytropix.core import CheckpointError
from bytropix.models.base import BytropixModel, build_model

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / 'bytropix'
LEGACY = Path(__file__).parent / 'fixtures' / 'legacy_exports'


def imported_modules(path: Path, package: str | None = None) -> set[str]:
    """Absolute names of the bytropix modules a file imports (relative imports resolved against `package`, by default
    the file's own, e.g. bytropix.models; `import a.b`, `from a import b`, and imports inside functions)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = package or '.'.join(path.relative_to(ROOT).with_suffix('').parts[:-1])
    out = set()
    for node in ast.walk(tree):  # also imports inside functions: a lazy import is still a dependency
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split('.')[0] == 'bytropix')
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split('.')[:len(package.split('.')) - node.level + 1]
                mod = '.'.join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ''
            if mod.split('.')[0] != 'bytropix': continue
            # `from bytropix.models import gpt` imports the module bytropix.models.gpt
            out.update(f'{mod}.{a.name}' if (PKG.joinpath(*mod.split('.')[1:], f'{a.name}.py')).is_file() else mod
                       for a in node.names)
    return out


def modules_under(sub: str) -> list[Path]:
    return sorted(p for p in (PKG / sub).glob('*.py') if p.name != '__init__.py')


MODEL_FILES = modules_under('models')


def test_the_checker_sees_imports_of_every_form(tmp_path):
    f = tmp_path / 'probe.py'
    f.write_text('from .gpt import GPT\nfrom . import bdh\nimport bytropix.models.wubu\nfrom bytropix.layers import blocks\n'
                 'def lazy():\n    from ..models.reasoning import HRM\n')
    got = imported_modules(f, package='bytropix.models')
    assert {'bytropix.models.gpt', 'bytropix.models.bdh', 'bytropix.models.wubu', 'bytropix.layers.blocks',
            'bytropix.models.reasoning'} <= got


@pytest.mark.parametrize('path', MODEL_FILES, ids=lambda p: p.name)
def test_no_model_file_imports_another_model_file(path):
    allowed = {'bytropix.models.base'}
    others = {m for m in imported_modules(path) if m.startswith('bytropix.models.') and m not in allowed}
    if path.name == 'zoo.py': others = set()  # the zoo lists the architectures; it is not a model
    assert not others, f"{path.relative_to(ROOT)} imports {sorted(others)}: move what models share to bytropix/layers/"


def test_model_files_depend_only_on_base_layers_geometry_and_core():
    allowed_prefixes = ('bytropix.models.base', 'bytropix.layers.', 'bytropix.geometry', 'bytropix.core',
                        'bytropix.generation',     # the base class's generate() delegates to it, lazily
                        'bytropix.quantization')   # save_/from_pretrained delegate quantized exports to it, lazily
    bad = {p.name: sorted(m for m in imported_modules(p) if not m.startswith(allowed_prefixes) and m != 'bytropix')
           for p in MODEL_FILES if p.name != 'zoo.py'}
    assert not {k: v for k, v in bad.items() if v}


@pytest.mark.parametrize('path', modules_under('layers'), ids=lambda p: p.name)
def test_layers_never_import_models(path):
    up = sorted(m for m in imported_modules(path) if m.startswith(('bytropix.models', 'bytropix.training', 'bytropix.data')))
    assert not up, f"{path.relative_to(ROOT)} imports {up}: layers sit below models"


def test_geometry_imports_only_core():
    deps = imported_modules(PKG / 'geometry.py') - {'bytropix.core'}
    assert deps <= {'bytropix.kernels'}, deps  # the kernel library is imported lazily by name, for dispatch


# -- old exports still load -------------------------------------------------------------------------------------------
LEGACY_CASES = sorted(p.name for p in LEGACY.iterdir() if p.is_dir())


@pytest.mark.parametrize('name', LEGACY_CASES)
def test_exports_saved_before_the_mends_load_with_identical_outputs(name):
    d = LEGACY / name
    assert 'files' not in json.loads((d / 'config.json').read_text())  # written before exports carried checksums
    m = BytropixModel.from_pretrained(d)
    exp = load_file(str(d / 'expected.safetensors'))
    with torch.no_grad(): logits = m(exp['ids']).logits
    torch.testing.assert_close(logits, exp['logits'], rtol=1e-5, atol=1e-5)


def test_legacy_fixtures_cover_every_architecture_and_the_renamed_parameter():
    arches = {json.loads((LEGACY / n / 'config.json').read_text())['arch'] for n in LEGACY_CASES}
    assert arches >= {'gpt', 'bdh', 'hrm', 'trm', 'puzzle_transformer', 'wubu', 'wubu_bytes'}
    from safetensors import safe_open
    with safe_open(str(LEGACY / 'wubu' / 'model.safetensors'), 'pt') as f:
        assert any(k.endswith('curvature.raw') for k in f.keys())  # the old name of a level's curvature


def test_a_legacy_checkpoint_resumes_through_load_state_dict_too():
    "The rename also applies to torch's own load_state_dict (a state dict from before the mends)."
    d = LEGACY / 'wubu'
    sd = load_file(str(d / 'model.safetensors'))
    meta = json.loads((d / 'config.json').read_text())
    m = build_model('wubu', meta['config'])
    raw = sd['blocks.0.wubu.geo.1.curvature.raw'].clone()
    missing, unexpected = m.load_state_dict(sd, strict=False)
    assert not unexpected and set(missing) <= {'wte.weight', 'lm_head.weight'}  # tied: stored once
    assert torch.equal(m.blocks[0].wubu.geo[1].curvature.isp_c.detach(), raw)


# -- exports carry checksums ------------------------------------------------------------------------------------------
@pytest.fixture
def export(tmp_path):
    from bytropix.data.tokenizers import byte_tokenizer
    torch.manual_seed(0)
    m = build_model('gpt', dict(vocab_size=256, block_size=16, n_layer=1, n_head=2, n_embd=16, multiple_of=16))
    m.save_pretrained(tmp_path / 'export', tokenizer=byte_tokenizer())
    return tmp_path / 'export'


def flip_one_byte(path: Path, offset: int = -7) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))


def test_export_records_the_sha256_of_weights_and_tokenizer(export):
    import hashlib
    files = json.loads((export / 'config.json').read_text())['files']
    assert sorted(files) == ['model.safetensors', 'tokenizer.json']
    for name, info in files.items():
        assert info['sha256'] == hashlib.sha256((export / name).read_bytes()).hexdigest()
        assert info['bytes'] == (export / name).stat().st_size


@pytest.mark.parametrize('name', ['model.safetensors', 'tokenizer.json'])
def test_one_flipped_byte_is_refused_naming_the_file(export, name):
    flip_one_byte(export / name)
    with pytest.raises(CheckpointError, match=f'{name} is corrupt: its SHA-256 differs.*Re-export'):
        BytropixModel.from_pretrained(export)


def test_cli_generate_on_a_flipped_export_is_one_error_line_and_exit_2(export):
    flip_one_byte(export / 'model.safetensors')
    r = subprocess.run([sys.executable, '-m', 'bytropix.cli', 'generate', str(export), '--prompt', 'ab',
                        '--max-new-tokens', '3'], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('bytropix generate: error:') and 'model.safetensors is corrupt' in lines[0]
    assert 'Traceback' not in r.stderr and r.stdout == ''


def test_every_config_names_known_elsewhere_point_at_its_own_fields():
    "`known_as` (other libraries' names of config fields) only maps names that are not fields to names that are."
    import bytropix.peft  # noqa: F401  (PeftConfig)
    from bytropix.config import RunConfig  # noqa: F401
    from bytropix.core import ConfigBase
    import bytropix.models.gpt  # noqa: F401  (GPTConfig)
    seen, todo = [], list(ConfigBase.__subclasses__())
    while todo:
        c = todo.pop(); seen.append(c); todo += c.__subclasses__()
    with_names = [c for c in seen if c.known_as]
    assert {'TrainConfig', 'PeftConfig', 'GPTConfig'} <= {c.__name__ for c in with_names}
    for c in with_names:
        fields = set(c.field_names())
        assert not set(c.known_as) & fields and set(c.known_as.values()) <= fields, c.__name__
