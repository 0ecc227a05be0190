"""The client-side model audit as a Flower client mod: a flagged model is refused before training.

gialab's ``ModelAudit`` defenses (``defenses/audit.py``: an imprint's parallel rows, trap units,
zeroed rows, a large constant bias, a model unlike the round's commitment) run here, in the
ClientApp, on the model a ``TRAIN`` message carries and on the batch the client would train on
(``ClientSetup.batch``, the same one training draws). Any finding and the mod does not call the
rest of the app: it replies with a Flower ``Error`` whose reason names the client and the
findings, and sends no update. To the server that is a failed client; under SecAgg+ a client
that fails at the masked-input stage is a dropout, whose masks its neighbours' shares remove, so
the round completes without it, as the in-process protocol's refusal does.

The round's commitment (``fl.commitment``) travels in the fit config, the same digest in every
client's: it stands for the public bulletin board a commitment needs. A server that wrote each
client the digest of that client's own model would pass the commitment check, which is why the
digest must be published, not sent; the content checks do not depend on it.

Placed before ``secaggplus_mod`` in the app's mods, it sees every ``TRAIN`` message; only the
one that carries the fit instructions (the model) is audited, SecAgg+'s key-exchange stages pass.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gialab.defenses.base import ModelAudit
from gialab.integrations.flower import wire
from gialab.integrations.flower.client_app import PARTITION, ClientSetup

FIT_PARAMETERS = "fitins.parameters"  # where Flower's compat layer puts FitIns.parameters
REFUSAL_CODE = 4001  # Flower leaves application error codes to apps; a refusal is not a crash


def refusal_reason(client: int, reasons: str) -> str:
    return json.dumps({"gialab_refusal": {"client": client, "reasons": reasons}})


def parse_refusal(reason: str | None) -> tuple[int, str] | None:
    """The client and findings of a refusal reply's reason; None for any other error."""
    try:
        refusal = json.loads(reason or "")["gialab_refusal"]
        return int(refusal["client"]), str(refusal["reasons"])
    except (ValueError, KeyError, TypeError):
        return None


@dataclass(frozen=True)
class AuditMod:
    """Refuses a ``TRAIN`` message whose model any of ``audits`` flags on the client's batch."""

    setup: ClientSetup
    audits: Sequence[ModelAudit]

    def __call__(self, msg: Any, ctxt: Any, call_next: Any) -> Any:
        from flwr.app import Error, Message
        from flwr.app.message_type import MessageType
        from flwr.common import parameters_to_ndarrays
        from flwr.compat.common import recorddict_compat as compat

        if msg.metadata.message_type != MessageType.TRAIN or FIT_PARAMETERS not in msg.content.array_records:
            return call_next(msg, ctxt)  # not a model: SecAgg+'s key stages, or another message type
        fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
        config = dict(fitins.config)
        client_id = int(ctxt.node_config[PARTITION])
        round_index = int(config[wire.ROUND])
        model = self.setup.decode(parameters_to_ndarrays(fitins.parameters), config)
        client = self.setup.files.load_client(client_id)
        batch = self.setup.batch(client, round_index)
        commitment = config.get(wire.COMMITMENT)
        published = None if commitment is None else str(commitment)
        findings = [f for audit in self.audits for f in audit.audit(model, batch.images, batch.labels, published)]
        if not findings:
            return call_next(msg, ctxt)
        reasons = "; ".join(f"{f.check}: {f.reason}" for f in findings)
        self.setup.files.write_record(round_index, client_id, batch, refused=reasons)
        return Message(Error(code=REFUSAL_CODE, reason=refusal_reason(client_id, reasons)), reply_to=msg)
