"""The largest networks trackserve builds, checked before any weight is made.

Torch-free, so that training settings are checked against them before torch loads. The
network definitions (:mod:`~trackserve.export.network_base`) check every config's depths
too, whether it comes from ``trackserve train``, a checkpoint's hyperparameters
(``trackserve import --hparams``) or a bundle; its widths come from the weights there.
"""

#: The widest layer a network may have: the networks run on CPUs, and a typo of a few digits
#: (``--gnn-hidden 100000000``) would otherwise ask for petabytes of weights.
MAX_WIDTH = 4096
#: The most layers (or message-passing iterations) a network may have: as with the widths, a
#: typo of a few digits (``--gnn-iterations 100000``, ``n_graph_iters: 100000000`` in a
#: hyperparameter file) would otherwise take the machine's memory or run without end instead
#: of being refused. The published ExaTrkX networks use up to 8 iterations and layers.
MAX_DEPTH = 64
