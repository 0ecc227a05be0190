"""gialab: a threat-model-first laboratory for gradient inversion attacks in federated learning."""

from gialab.errors import GialabError
from gialab.runner import RunResult, run
from gialab.scenario import Scenario, load_scenario

__version__ = "0.1.0"
__all__ = ["GialabError", "RunResult", "Scenario", "__version__", "load_scenario", "run"]
