"""The papers' claims as the survey's Figure 1 states them, and the rule that turns a measurement into a verdict.

Figure 1 of the survey ("Dealing Doubt", Shi et al., section 3) summarises eight attacks by
malicious participants in seven rows: threat model, reconstruction method, target data, target
model architecture, FL setup, input, and defense broken. ``FIGURE1`` holds those cells as the
figure writes them (typesetting cleaned, nothing added), one :class:`PaperClaim` per column of
the figure, with the gialab attacks that implement the paper. ``claimed_defenses`` translates the
figure's "Defense Broken" row into gialab defense names, so the report can set the claim beside
what gialab measures under that defense; it is the only interpretation made here, and it follows
the figure's own abbreviations: SA is secure aggregation; SA + DDP is secure aggregation with
distributed differential privacy, the two together; Byzantine robust AGRs are each of gialab's
robust aggregation rules.

The verdict rule (:func:`verdict`) is deliberately coarse, because the question the survey asks of
a defense is whether any individual sample leaks: an image attack *breaks* a defense when, in the
median seed, it recovers at least one sample of the batch at or above the scenario's
``recovered_psnr`` (30 dB unless the preset says otherwise); a text attack breaks it when the
median token accuracy is at least one half. Otherwise the defense *held* in that cell.
"""

from __future__ import annotations

from dataclasses import dataclass

# The verdict rule's thresholds (see the module docstring).
BROKEN_FRACTION = 0.0  # image attacks: median fraction recovered strictly above this
BROKEN_TOKEN_ACCURACY = 0.5  # text attacks: median token accuracy at or above this

VERDICT_RULE = (
    "Verdict: an image attack <b>breaks</b> a defense when in the median seed it recovers at least one sample "
    "at or above the scenario's recovered_psnr (30 dB unless the preset sets it); a text attack when its median "
    f"token accuracy is at least {BROKEN_TOKEN_ACCURACY:g}. Otherwise the defense <b>held</b> in that cell."
)

BYZANTINE_ROBUST = ("krum", "multikrum", "median", "trimmed_mean", "bulyan", "fltrust", "norm_bound")


@dataclass(frozen=True)
class PaperClaim:
    """One column of the survey's Figure 1: the paper, its gialab attacks, and the figure's seven cells."""

    paper: str  # as the survey cites it
    attacks: tuple[str, ...]  # gialab attack names implementing it (taxonomy records)
    threat_model: str
    reconstruction_method: str
    target_data: str
    architecture: str
    fl_setup: str
    input: str
    defense_broken: str
    claimed_defenses: tuple[tuple[str, ...], ...] = ()  # gialab defense lists the paper claims to break

    def fields(self) -> dict[str, str]:
        """The seven rows of Figure 1, in the figure's order, under the figure's names."""
        return {
            "threat model": self.threat_model, "reconstruction method": self.reconstruction_method,
            "target data": self.target_data, "architecture": self.architecture, "FL setup": self.fl_setup,
            "input": self.input, "defense broken": self.defense_broken,
        }


SA = (("secure_aggregation",),)

FIGURE1: tuple[PaperClaim, ...] = (
    PaperClaim(
        "Lam et al., 2021", ("disaggregation",), "Adversarial server + side channel", "Matrix refactorization",
        "CIFAR10 and CIFAR100. Batch sizes 18, 16, 32. User dataset size 64, 128.", "LeNet CNN with 3 layers",
        "FedAVG. Central server is adversarial and fixes the model across rounds. Random client selection / device "
        "participation of up to 1000 users.",
        "Aggregated gradients G_aggre, constraint window, constraint sums, number of users", "SA", SA),
    PaperClaim(
        "Boenisch et al., 2023b", ("trap-weights", "trap-weights-text"), "Malicious server",
        "Sparsity by trap weights", "MNIST, CIFAR100, ImageNet. IMDB for text. Batch size up to 100",
        "Networks with fully connected layers and ReLU activation - FC-NNs and CNNs",
        "FedAVG. Central server target users by sending model with trap weights. Users hold five mini batches "
        "ranging from {10, 20, 40} data points.", "Minibatch aggregated gradients", "None tested"),
    PaperClaim(
        "Fowl et al., 2021", ("robbing-the-fed",), "Malicious server", "Sparsity by imprint module",
        "ImageNet. Batch size varying between 64, 128, 256.",
        "ResNet18 tested, but Model Agnostic for any neural network that gets non-zero gradient signal",
        "Both FedAVG and FedSGD. FedAVG case necessitates additional linear scaling in imprint module.",
        "Batched gradient update after secure aggregation under cross-silo setting.", "SA", SA),
    PaperClaim(
        "Wen et al., 2022", ("fishing",), "Malicious server", "Sparsity by malicious parameters",
        "ImageNet. Batch size up to 250 tested.", "ResNet18 with Adam optimizer tested, Model Agnostic",
        "FedSGD, assuming attacker (central server) can estimate CDF of distribution for any feature of interest "
        "in the target class.",
        "Batched gradient update after secure aggregation, for both cross device and cross silo settings.", "SA", SA),
    PaperClaim(
        "Fowl et al., 2022", ("decepticons",), "Malicious server", "Sparsity by imprint module",
        "Wikitext, Batch size 512 w/ seq. len. 32. Stackoverflow, batch size 64 w/ seq. len. 512.",
        "3 layer transformer, BERT-Base, and smallest GPT2", "FedSGD with up to 100 users. Claims FedAVG",
        "Averaged gradient of multiple sequences of multiple tokens", "None tested"),
    PaperClaim(
        "Wei et al., 2023", ("cgi",), "Malicious client", "Sparsity by model poisoning",
        "CIFAR10, TinyImageNet, Caltech256, Batch Size 8-32.", "Resnet18 but any deep neural network",
        "FedAVG and FedSGD with byzantine robust aggregation rules (AGRs). m coordinated malicious clients out of "
        "N total clients", "Model parameter updates from uncompromised server", "Byzantine Robust AGRs",
        tuple((name,) for name in BYZANTINE_ROBUST)),
    PaperClaim(
        "Pasquini et al., 2022", ("inconsistency",), "Malicious server", "Isolation by inconsistent model",
        "CIFAR10, CIFAR100, tinyImagenet. Batch size up to 512.",
        "Resnet, but should be model agnostic for any neural network with fully-connected layer.",
        "FedSGD and FedAVG with secure aggregation. Malicious server can corrupt a fixed number of users, same "
        "threat model as secure aggregation paper.", "Batch gradient after secure aggregation", "SA", SA),
    PaperClaim(
        "Boenisch et al., 2023a", ("sybil",), "Malicious server + Sybil devices", "Isolation by sybil devices",
        "CIFAR10 across mini batch sizes 10, 20, 100. IMDB for sentiment analysis",
        "6-layer fully connected neural net, same as Curious Abandon Honesty",
        "FedSGD under distributed differential privacy (DDP) and secure aggregation. M - 1 sybil devices for M "
        "sampled participants per round.", "Batch gradient after secure aggregation and DDP", "SA + DDP",
        (("dp_distributed", "secure_aggregation"),)),
)

CLAIM_OF: dict[str, PaperClaim] = {attack: claim for claim in FIGURE1 for attack in claim.attacks}


def is_broken(fraction_recovered: float | None, token_accuracy: float | None, *, text: bool) -> bool | None:
    """The verdict rule on a cell's medians: True broken, False held, None when the metric is missing."""
    if text:
        return None if token_accuracy is None else token_accuracy >= BROKEN_TOKEN_ACCURACY
    return None if fraction_recovered is None else fraction_recovered > BROKEN_FRACTION


def claims_to_break(claim: PaperClaim, defense_names: tuple[str, ...]) -> bool:
    """Whether the paper claims to break this column's defenses (their names, order aside)."""
    return bool(defense_names) and any(sorted(names) == sorted(defense_names) for names in claim.claimed_defenses)
