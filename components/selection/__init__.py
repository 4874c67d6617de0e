"""Selection stage (active learning) and the annotators that label what it selects."""
from components.registry import Method

_SETTLES = "Settles, Active Learning Literature Survey, UW-Madison TR 1648 (2009)"

METHODS = [
    Method("selection", "random", "-", "Uniform random batch (the baseline every strategy must beat)",
           "components.selection.strategies:RandomSampling", "components.selection.component:select_random"),
    Method("selection", "entropy", f"Shannon entropy of the prediction; {_SETTLES}",
           "Highest predictive entropy -sum p log p first",
           "components.selection.strategies:EntropySampling", "components.selection.component:select_entropy"),
    Method("selection", "margin", f"Scheffer et al., Active Hidden Markov Models, IDA 2001; {_SETTLES}",
           "Smallest gap between the two most probable classes first",
           "components.selection.strategies:MarginSampling", "components.selection.component:select_margin"),
    Method("labelling", "simulated", "-", "Reveal the dataset's own labels (benchmark protocol)",
           "components.selection.annotators:SimulatedAnnotator", "components.selection.component:label_simulated"),
]
