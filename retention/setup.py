"""Loading everything a run needs (config, policies, allowlist), validated together."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from retention.allowlist import Allowlist, load_allowlist
from retention.config import Config, load_config
from retention.errors import ConfigError, Problem
from retention.planner import Options
from retention.policy import Policy, load_policies
from retention.secrets import Secret


@dataclass(frozen=True, slots=True)
class Setup:
    config: Config
    policies: tuple[Policy, ...]
    allowlist: Allowlist

    def secrets(self) -> list[Secret]:
        """Every configured password, for the log redactor."""
        return [r.credentials.password for r in self.config.registries.values()
                if r.credentials is not None]

    def planner_options(self) -> Options:
        return Options(untagged_grace=self.config.untagged_grace,
                       max_deletions=self.config.max_deletions, allowlist=self.allowlist)

    def select(self, names: list[str] | None) -> tuple[Policy, ...]:
        """The policies named (all when none are); unknown names are a usage error."""
        if not names:
            return self.policies
        known = {p.name for p in self.policies}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ConfigError([Problem("--policy", 1, 1, f"no policy named {n!r}; known: "
                                       f"{', '.join(sorted(known))}") for n in unknown])
        return tuple(p for p in self.policies if p.name in names)


def load_setup(config_path: str | Path) -> Setup:
    """Load and validate the config and everything it names; every problem at once."""
    config = load_config(config_path)
    problems: list[Problem] = []
    policies: tuple[Policy, ...] = ()
    allowlist = Allowlist.of(())
    try:
        policies = load_policies([config.policies], registries=config.registries.keys())
    except ConfigError as exc:
        problems.extend(exc.problems)
    try:
        allowlist = load_allowlist(config.allowlist, hosts=config.hosts())
    except ConfigError as exc:
        problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    return Setup(config, policies, allowlist)
