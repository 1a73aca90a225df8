"""Open the Feast store of a repo folder from any current directory.

`feature_store.yaml` names the registry `sqlite:///registry.db`, which SQLAlchemy resolves against the
*current directory*, not the repo folder (see `feast_repo/README.md`). `open_store` loads the yaml and makes
that URL absolute against the repo before the registry is opened, so `materialize`, the online benchmark and
the tests work wherever they run. Other registry URLs (postgresql://..., absolute sqlite paths) pass through.

Feast is imported inside the function: `import feast` loads torch, and importing the plugin must stay cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ConfigError

if TYPE_CHECKING:
    from feast import FeatureStore

FEATURE_STORE_YAML = "feature_store.yaml"
_SQLITE_PREFIX = "sqlite:///"


def absolute_registry_url(url: str, repo_path: Path) -> str:
    """`url` with a relative sqlite path made absolute against `repo_path`; other URLs unchanged."""
    if url.startswith(_SQLITE_PREFIX) and not url.startswith(_SQLITE_PREFIX + "/"):
        return _SQLITE_PREFIX + str((Path(repo_path) / url[len(_SQLITE_PREFIX) :]).resolve())
    return url


def open_store(repo_path: str | Path) -> FeatureStore:
    """A FeatureStore on `repo_path` whose registry URL does not depend on the current directory.

    Args:
        repo_path: the feature repository folder (holding `feature_store.yaml`).

    Returns:
        The opened `feast.FeatureStore`.

    Raises:
        ConfigError: no `feature_store.yaml` in `repo_path`.
    """
    from feast import FeatureStore
    from feast.repo_config import load_repo_config

    repo = Path(repo_path).expanduser().resolve()
    yaml_path = repo / FEATURE_STORE_YAML
    if not yaml_path.exists():
        raise ConfigError(f"no {FEATURE_STORE_YAML} in {repo}; pass the feature repository folder (e.g. feast_repo)")
    config = load_repo_config(repo, yaml_path)
    registry = config.registry_config
    # `registry: data/registry.db` (a plain file registry) is a string that Feast resolves against the repo.
    if isinstance(registry, dict):
        registry["path"] = absolute_registry_url(registry["path"], repo)
    elif not isinstance(registry, str):
        registry.path = absolute_registry_url(registry.path, repo)
    return FeatureStore(repo_path=str(repo), config=config)
