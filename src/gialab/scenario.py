"""The validated run configuration, its presets, and ``--set`` overrides: one place for defaults.

A scenario is a preset name or a YAML file, plus dotted ``key=value`` overrides. Values are read
as YAML, so ``--set defenses=[dp,secure_aggregation]`` is a list and ``--set seed=3`` an int.
Every way a scenario can be wrong ends in one ``GialabError`` line naming the key and what is valid.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel, ConfigDict, Field, NonNegativeInt, PositiveFloat, PositiveInt, ValidationError, model_validator,
)

from gialab.errors import GialabError, unknown_name
from gialab.fl.setup import FLSetup
from gialab.threats import Capability, SideInformation


class AttackConfig(BaseModel):
    """The attack's name and its hyperparameters; the attack's own ``Params`` validates the rest."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: str

    @property
    def hyperparameters(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class DefenseConfig(BaseModel):
    """One defense: its name, or a mapping of its name and parameters (validated by the defense)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    name: str

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @property
    def parameters(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    def compact(self) -> str | dict[str, Any]:
        """The name alone when no parameter is set, else the mapping (how it is shown and stored)."""
        return self.name if not self.parameters else {"name": self.name, **self.parameters}


class Scenario(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "custom"
    description: str = ""
    seed: NonNegativeInt = 0
    dataset: str = "natural"
    data_path: Path | None = Field(None, description="folder for cifar10, cifar100 and image-folder")
    model: str = "lenet"
    weights: Path | None = Field(None, description="state dict loaded with torch.load(weights_only=True)")
    pretrain_steps: NonNegativeInt = Field(0, description=(
        "Adam steps on the dataset before round 1, standing in for rounds FL has already run (images only)"))
    sequence_length: PositiveInt | None = Field(None, description="tokens per sequence, text datasets only (default 32)")
    batch_size: PositiveInt = Field(1, description="examples each client trains on in a round")
    examples_per_client: PositiveInt | None = Field(None, description="local data size; default batch_size")
    clients: PositiveInt = 1
    partition: Literal["iid", "dirichlet"] = "iid"
    dirichlet_alpha: PositiveFloat = 0.5
    fl: FLSetup = FLSetup()
    threat_model: str = "honest-but-curious-server"
    extra_capabilities: tuple[Capability, ...] = ()
    side_information: tuple[SideInformation, ...] = ()
    analytics_window: PositiveInt | None = Field(
        None, description="rounds per device-analytics report of each client's participation count "
                          "(what the participation_side_channel capability reveals; None: no reports)")
    victim: NonNegativeInt = Field(0, description="the client the attacker targets")
    attacker: NonNegativeInt | None = Field(
        None, description="the curious node under a gossip fl.topology; default the victim's lowest-numbered neighbour")
    malicious_clients: NonNegativeInt | tuple[NonNegativeInt, ...] | None = Field(None, description=(
        "client-side attacks: the malicious client's id, or the ids of coordinated ones (the victims are "
        "all other clients)"))
    attack: AttackConfig
    defenses: tuple[DefenseConfig, ...] = ()
    device: str = "cpu"
    recovered_psnr: float = Field(30.0, description="PSNR (dB) at which a sample counts as recovered")
    lpips_weights: Path | None = None

    @property
    def local_examples(self) -> int:
        return self.examples_per_client or self.batch_size

    @property
    def malicious_ids(self) -> tuple[int, ...]:
        """The malicious clients' ids (empty when no client is malicious)."""
        if self.malicious_clients is None:
            return ()
        return (self.malicious_clients,) if isinstance(self.malicious_clients, int) else tuple(self.malicious_clients)


def _preset_dir() -> Any:
    return resources.files("gialab") / "presets"


def preset_names() -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in _preset_dir().iterdir() if p.name.endswith(".yaml"))


def presets() -> dict[str, str]:
    """Preset name -> its one-line description."""
    return {name: str(_read_yaml_text(( _preset_dir() / f"{name}.yaml").read_text(), name).get("description", ""))
            for name in preset_names()}


def _read_yaml_text(text: str, origin: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0]
        raise GialabError(f"{origin} is not valid YAML: {first}") from None
    if not isinstance(data, dict):
        raise GialabError(f"{origin} must hold a mapping of settings, got {type(data).__name__}")
    return data


def _load_source(source: str | Path) -> dict[str, Any]:
    text = str(source)
    if text in preset_names():
        data = _read_yaml_text((_preset_dir() / f"{text}.yaml").read_text(), f"preset {text}")
        data.setdefault("name", text)
        return data
    path = Path(text)
    if text.endswith((".yaml", ".yml")) or path.exists():
        if not path.is_file():
            raise GialabError(f"scenario file not found: {path}")
        try:
            content = path.read_text()
        except OSError as exc:
            raise GialabError(f"cannot read scenario file {path}: {exc.strerror}") from None
        data = _read_yaml_text(content, str(path))
        data.setdefault("name", path.stem)
        return data
    raise unknown_name("preset", text, preset_names())


def parse_assignment(text: str) -> tuple[str, Any]:
    """``key=value`` with the value read as YAML (so numbers, booleans and lists keep their type)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise GialabError(f"--set expects key=value, got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def apply_overrides(data: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Set dotted keys (``attack.iterations``, ``fl.algorithm``) in a nested copy of ``data``."""
    result = yaml.safe_load(yaml.safe_dump(data))  # deep copy through plain types
    nested = {"attack", "fl"}
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        top = parts[0]
        if top not in Scenario.model_fields:
            raise unknown_name("setting", top, Scenario.model_fields)
        if len(parts) > 1 and top not in nested:
            raise GialabError(f"setting {top!r} has no sub-keys; dotted keys work for {', '.join(sorted(nested))}")
        node = result
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise GialabError(f"cannot set {dotted!r}: {part!r} is not a mapping")
        node[parts[-1]] = value
    return result


def _explain(exc: ValidationError) -> str:
    errors = exc.errors()
    parts = []
    for err in errors[:3]:
        where = ".".join(str(x) for x in err["loc"]) or "scenario"
        if err["type"] == "extra_forbidden":
            parts.append(f"{where}: unknown setting")
        else:
            parts.append(f"{where}: {err['msg']} (got {err.get('input')!r})")
    more = f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
    return "; ".join(parts) + more


def load_scenario(
    source: str | Path | Scenario | Mapping[str, Any], overrides: Mapping[str, Any] | Iterable[str] = ()
) -> Scenario:
    """Resolve a preset name, a YAML path, a mapping or a Scenario, then apply overrides."""
    if isinstance(source, Scenario):
        data = source.model_dump(mode="json", exclude_none=True)
    elif isinstance(source, Mapping):
        data = dict(source)
    else:
        data = _load_source(source)
    if not isinstance(overrides, Mapping):
        overrides = dict(parse_assignment(item) for item in overrides)
    data = apply_overrides(data, overrides)
    if "attack" not in data:
        raise GialabError("scenario needs an attack: set attack.name (see `gialab catalog`)")
    if isinstance(data["attack"], str):
        data["attack"] = {"name": data["attack"]}
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        raise GialabError(f"invalid scenario: {_explain(exc)}") from None
