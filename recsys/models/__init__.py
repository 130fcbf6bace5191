"""Models over feature embeddings: the DCN-v2 ranker and the two-tower retrieval model."""

from recsys.models.ranker import Ranker, RankerOutput
from recsys.models.two_tower import ItemFrequency, TwoTower, TwoTowerOutput

__all__ = ["ItemFrequency", "Ranker", "RankerOutput", "TwoTower", "TwoTowerOutput"]
