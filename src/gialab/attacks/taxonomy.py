"""The survey's attacks as taxonomy records ("Dealing Doubt", Shi et al.; sections 2-3, Figure 1).

One record per attack the survey names. Names double as preset names once implemented.
Families use the survey's words: optimization, analytic, analytical decomposition, gradient
sparsification, gradient isolation, client-side poisoning.
"""

from __future__ import annotations

from gialab.attacks.registry import TaxonomyRecord as R

HBC = "honest-but-curious-server"
MAL = "malicious-server"
CLI = "malicious-client"
SGD, AVG = "FedSGD", "FedAvg"

_RECORDS = (
    # Honest-but-curious server (survey sections 2 and 2.1)
    R("fc-leakage", "Natural leakage of a fully connected layer",
      "Phong et al. 2018, Privacy-Preserving Deep Learning via Additively Homomorphic Encryption (IEEE TIFS)",
      HBC, "analytic", (SGD,), "images", "first layer fully connected with bias", survey_section="2"),
    R("dlg", "Deep Leakage from Gradients", "Zhu, Liu, Han 2019 (NeurIPS)",
      HBC, "optimization", (SGD,), "images", "LeNet (sigmoid)", survey_section="2.1, eqs. 1-2"),
    R("idlg", "iDLG: Improved Deep Leakage from Gradients", "Zhao, Mopuri, Bilen 2020 (arXiv 2001.02610)",
      HBC, "optimization", (SGD,), "images, batch 1", "LeNet (sigmoid)", survey_section="2.1, eqs. 1-2"),
    R("inverting-gradients", "Inverting Gradients",
      "Geiping, Bauermeister, Droege, Moeller 2020 (NeurIPS)", HBC, "optimization", (SGD,), "images",
      "ConvNet, ResNet", survey_section="2.1"),
    R("fedavg-inversion", "Inverting FedAvg updates by unrolling local steps",
      "Geiping, Bauermeister, Droege, Moeller 2020 (NeurIPS), section 5", HBC, "optimization", (AVG,),
      "images", "ConvNet", survey_section="2.1"),
    R("cpl", "Client Privacy Leakage framework",
      "Wei et al. 2020, A Framework for Evaluating Client Privacy Leakages in Federated Learning (ESORICS)",
      HBC, "optimization", (SGD,), "images", "LeNet, CNNs", survey_section="1"),
    R("gradinversion", "See through Gradients: GradInversion", "Yin et al. 2021 (CVPR)",
      HBC, "optimization", (SGD,), "images, batch 8-48", "ResNet-50 with BatchNorm", survey_section="1, 2.3"),
    R("cafe", "CAFE: Catastrophic Data Leakage in Vertical FL", "Jin et al. 2021 (NeurIPS)",
      HBC, "optimization", ("vertical FL",), "images, large batch", "any", survey_section="2.1"),
    R("copa", "Understanding training-data leakage from gradients (COPA)", "Chen and Campbell 2021 (arXiv 2111.10178)",
      HBC, "analytic", (SGD,), "images", "CNNs", survey_section="2.1"),
    R("rgap", "R-GAP: Recursive Gradient Attack on Privacy", "Zhu and Blaschko 2021 (ICLR)",
      HBC, "analytic", (SGD,), "images, batch 1", "CNN6 (conv/FC)", survey_section="2.1"),
    R("cocktail-party", "Cocktail Party Attack", "Kariyappa et al. 2022 (arXiv 2209.05578; ICML 2023)",
      HBC, "analytic", (SGD,), "images, batch up to 1024", "fully connected first layer",
      defense_broken="aggregation", survey_section="2.1"),
    R("gias", "Gradient Inversion with Generative Image Prior", "Jeon et al. 2021 (NeurIPS)",
      HBC, "optimization", (SGD,), "images", "CNNs, needs a trained generator", survey_section="2.1"),
    R("gifd", "GIFD: generative gradient inversion with feature-domain optimization", "Fang et al. 2023 (ICCV)",
      HBC, "optimization", (SGD,), "images", "CNNs, needs a trained generator", survey_section="2.1"),
    R("learning-to-invert", "Learning to Invert: adaptive attacks", "Wu et al. 2023 (UAI)",
      HBC, "optimization", (SGD,), "images and text", "any", defense_broken="DP, pruning, sign compression",
      survey_section="2.1, 2.2"),
    R("april", "APRIL: attacks on vision transformers", "Lu et al. 2021 (arXiv 2112.14087; CVPR 2022)",
      HBC, "optimization", (SGD,), "images", "ViT", survey_section="2.1"),
    R("gradvit", "Gradient inversion with priors on medical images", "Hatamizadeh et al. 2023 (IEEE TMI)",
      HBC, "optimization", (AVG,), "chest X-ray images", "ResNet", defense_broken="weak DP",
      survey_section="2.1, 2.3"),
    R("obfuscation-attack", "Gradient obfuscation gives a false sense of security", "Yue et al. 2023 (USENIX Security)",
      HBC, "optimization", (SGD,), "images", "CNNs", defense_broken="compression, obfuscation",
      survey_section="1"),
    R("lamp", "LAMP: recovering private text", "Gupta et al. 2022 (NeurIPS)",
      HBC, "optimization", (SGD,), "text", "BERT, GPT-2", survey_section="3.2"),
    # Malicious participants (survey section 3 and Figure 1)
    R("disaggregation", "Gradient Disaggregation", "Lam et al. 2021 (ICML)",
      MAL, "analytical decomposition", (AVG,), "images (CIFAR-10/100), batch 16-32",
      "LeNet CNN with 3 layers", "secure aggregation", figure1=True, survey_section="3.1, eqs. 3-5"),
    R("trap-weights", "When the Curious Abandon Honesty: trap weights", "Boenisch et al. 2023b (IEEE EuroS&P)",
      MAL, "gradient sparsification", (AVG,), "images, batch up to 100", "FC nets and CNNs with ReLU",
      figure1=True, survey_section="3.1, eq. 10"),
    R("trap-weights-text", "When the Curious Abandon Honesty: trap weights on text",
      "Boenisch et al. 2023b (IEEE EuroS&P)", MAL, "gradient sparsification", (AVG,), "text (IMDB)",
      "transformer embeddings", figure1=True, survey_section="3.1, eq. 10"),
    R("robbing-the-fed", "Robbing the Fed: imprint module", "Fowl et al. 2021 (ICLR 2022)",
      MAL, "gradient sparsification", (SGD, AVG), "images, batch 64-256", "model agnostic",
      "secure aggregation", figure1=True, survey_section="3.1, eqs. 6-7"),
    R("fishing", "Fishing for user data: class and feature fishing", "Wen et al. 2022 (ICML)",
      MAL, "gradient sparsification", (SGD,), "images, batch up to 256", "model agnostic",
      "secure aggregation", figure1=True, survey_section="3.1, eqs. 11-14"),
    R("decepticons", "Decepticons: corrupted transformers", "Fowl et al. 2022 (ICLR 2023)",
      MAL, "gradient sparsification", (SGD,), "text, 512 sequences x 32 tokens",
      "transformers (3-layer, BERT, GPT-2)", figure1=True, survey_section="3.1, eqs. 8-9"),
    R("cgi", "Client-side Gradient Inversion from poisoning", "Wei et al. 2023 (arXiv 2309.07415)",
      CLI, "client-side poisoning", (SGD, AVG), "images, batch 8-32", "ResNet-18, any DNN",
      "Byzantine-robust aggregation", figure1=True, survey_section="3.1, eqs. 15-21"),
    R("inconsistency", "Eluding secure aggregation via model inconsistency", "Pasquini et al. 2022 (ACM CCS)",
      MAL, "gradient isolation", (SGD, AVG), "images, batch up to 512", "any net with a ReLU layer",
      "secure aggregation", figure1=True, survey_section="3.1"),
    R("sybil", "Sybil devices against secure aggregation and distributed DP", "Boenisch et al. 2023a (IEEE EuroS&P)",
      MAL, "gradient isolation", (SGD,), "images (CIFAR-10), IMDB", "6-layer FC net",
      "secure aggregation + distributed DP", figure1=True, survey_section="3.1"),
    R("gan-leakage", "Deep models under the GAN", "Hitaj et al. 2017 (ACM CCS)",
      CLI, "optimization", (AVG,), "class representatives (images)", "CNNs", survey_section="2.1"),
)

RECORDS: dict[str, R] = {r.name: r for r in _RECORDS}
