from pathlib import Path

import pytest

from router.config import config_reference, load_config

README = Path(__file__).resolve().parents[2] / "README.md"


def test_embedded_config_loads():
    c = load_config()
    assert set(c.models) == {"smollm2-135m", "gemma3-270m"}
    assert c.router.roles == {"small": "smollm2-135m", "large": "gemma3-270m"}
    assert all(p.backend == "vllm" for p in c.models.values())


def test_readme_configuration_reference_matches_the_code():
    assert config_reference() in README.read_text(), "regenerate README's reference: thinkroute config-reference"


@pytest.mark.parametrize("override,needle", [
    ({"router.default_model": "nope"}, "router.default_model"),
    ({"dial.default": 2}, "dial.default"),
    ({"router.roles": {"small": "ghost"}}, "router.roles.small"),
    ({"router.unknown_key": 1}, "router.unknown_key"),
])
def test_invalid_config_names_the_field(override, needle):
    with pytest.raises(SystemExit) as err:
        load_config(overrides=override)
    assert needle in str(err.value)
