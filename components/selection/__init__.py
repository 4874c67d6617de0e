"""Selection stage (active learning) and the annotators that label what it selects.

Every strategy is one registry entry and one KFP component; wrappers (``anchoral`` and the three
stochastic samplers, ``stream``) take the name of the strategy they wrap as their ``base`` parameter.
"""
from distillery.components.core.registry import Method

_SETTLES = "Settles, Active Learning Literature Survey, UW-Madison TR 1648 (2009)"
_BALD = ("Houlsby et al., Bayesian Active Learning for Classification and Preference Learning, arXiv 2011; "
         "Gal, Islam & Ghahramani, Deep Bayesian Active Learning with Image Data, ICML 2017")
_GRADNORM = "Wang et al., Boosting Active Learning via Improving Test Performance, AAAI 2022"
_STOCHASTIC = "Kirsch et al., Stochastic Batch Acquisition: A Simple Baseline for Deep Active Learning, TMLR 2023"
_NEURONAL = "Ban et al., Neural Active Learning Beyond Bandits, ICLR 2024"
_WRAPPED = {"base": "entropy", "base_params": {}}
_GRADNORM_DEFAULTS = {"candidates": None, "chunk_size": 256}
_NEURONAL_DEFAULTS = {"hidden": 100, "block": 51, "epochs": 100, "lr": 0.01}


def _strategy(name, paper, summary, target, defaults=None):
    return Method("selection", name, paper, summary, f"distillery.components.selection.{target}", defaults or {})


METHODS = [
    _strategy("random", "-", "Uniform random batch (the baseline every strategy must beat)",
              "strategies:RandomSampling"),
    _strategy("least_confidence", f"Lewis & Gale, A Sequential Algorithm for Training Text Classifiers, "
              f"SIGIR 1994; {_SETTLES}", "Lowest top-class probability 1 - p_max first",
              "strategies:LeastConfidence"),
    _strategy("entropy", f"Shannon entropy of the prediction; {_SETTLES}",
              "Highest predictive entropy -sum p log p first", "strategies:EntropySampling"),
    _strategy("margin", f"Scheffer et al., Active Hidden Markov Models, IDA 2001; {_SETTLES}",
              "Smallest gap between the two most probable classes first", "strategies:MarginSampling"),
    _strategy("bald", _BALD, "Mutual information H[mean p] - mean H[p] over MC-dropout passes",
              "mc_dropout:BALD", {"mc_passes": 10}),
    _strategy("badge", "Ash et al., Deep Batch Active Learning by Diverse, Uncertain Gradient Lower Bounds, "
              "ICLR 2020", "k-means++ seeding on last-layer gradient embeddings (onehot(y_hat) - p) x h",
              "diversity:BADGE"),
    _strategy("coreset", "Sener & Savarese, Active Learning for Convolutional Neural Networks: A Core-Set "
              "Approach, ICLR 2018", "Greedy k-center on penultimate features", "diversity:CoreSet"),
    _strategy("expected_gradnorm", _GRADNORM, "Sum of per-tensor gradient norms of the expected loss "
              "sum_c p_c CE(x, c)", "gradnorm:ExpectedGradNorm", _GRADNORM_DEFAULTS),
    _strategy("entropy_gradnorm", _GRADNORM, "Sum of per-tensor gradient norms of the prediction entropy",
              "gradnorm:EntropyGradNorm", _GRADNORM_DEFAULTS),
    _strategy("anchoral", "Lesci & Vlachos, AnchorAL: Computationally Efficient Active Learning for Large "
              "and Imbalanced Datasets, NAACL 2024", "Subpool of the k-NN of per-class anchors, then the base "
              "strategy on it", "anchoral:AnchorAL",
              {**_WRAPPED, "subpool_size": 10000, "neighbours": 50, "anchors_per_class": 10,
               "subpool_sampling": "top", "embedding": "model",
               "anchor_method": "kmeans++"}),
    _strategy("softmax_sampling", _STOCHASTIC, "Sample the batch with p ~ exp(beta s) of a base score",
              "stochastic:SoftmaxSampling", {**_WRAPPED, "beta": 1.0}),
    _strategy("power_sampling", _STOCHASTIC, "Sample the batch with p ~ s^beta of a base score (s > 0)",
              "stochastic:PowerSampling", {**_WRAPPED, "beta": 1.0}),
    _strategy("softrank_sampling", _STOCHASTIC, "Sample the batch with p ~ rank^-beta of a base score",
              "stochastic:SoftRankSampling", {**_WRAPPED, "beta": 1.0}),
    _strategy("neuronal_pool", _NEURONAL, "Exploitation + exploration networks, gap-inverse sampling",
              "neuronal:NeurOnAlPool", {**_NEURONAL_DEFAULTS, "mu": 1000.0, "gamma": 1000.0}),
    _strategy("neuronal_stream", _NEURONAL, "Exploitation + exploration networks, query when the top-two "
              "gap is below gamma", "neuronal:NeurOnAlStream", {**_NEURONAL_DEFAULTS, "gamma": 0.5}),
    _strategy("stream", "Cohn, Atlas & Ladner, Improving Generalization with Active Learning, Machine "
              "Learning 15 (1994)", "Items arrive one at a time; query while the base score clears an "
              "adaptive threshold, under the label budget", "stream:StreamSelection",
              {"base": "margin", "base_params": {}, "warmup": 100}),
]
