"""Regression: after the move to rtnf/apps, `rtnf demo` without --config looked for rtnf/config/demo_acc.toml
(the README's first quick-start command failed with a config error)."""

from rtnf.apps.demo import REPO_CONFIG
from tests.helpers import CONFIG_DIR


def test_the_demo_finds_its_default_config():
    assert REPO_CONFIG == CONFIG_DIR
    assert (REPO_CONFIG / "demo_acc.toml").is_file()
