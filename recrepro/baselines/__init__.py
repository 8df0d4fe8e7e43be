"""Classic baselines that score the frozen candidate lists: Random, MostPop, and RecBole models."""
