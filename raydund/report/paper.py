"""The paper's published numbers that ``raydund report`` sets beside a run's own."""

#: Published numbers (Dalvi et al. 2020, Tables 9 and 10: BERT-base, test accuracy %, LS layers,
#: CCFS neurons) for the tasks whose data raydund has; keyed by (corpus, label).
PAPER = {
    ("conll2000", "pos"): {"task": "POS", "oracle": 95.2, "ls": 94.8, "ls_layers": 3, "ccfs": 93.9, "neurons": 300},
    ("ptb_wsj_sample", "pos"): {"task": "POS", "oracle": 95.2, "ls": 94.8, "ls_layers": 3, "ccfs": 93.9,
                                "neurons": 300},
    ("pmb_semtag", "semtag"): {"task": "SEM", "oracle": 92.0, "ls": 91.2, "ls_layers": 3, "ccfs": 90.1,
                               "neurons": 400},
    ("pmb_semtag", "ccg"): {"task": "CCG", "oracle": 90.1, "ls": 89.2, "ls_layers": 8, "ccfs": 90.2, "neurons": 400},
    ("conll2000", "chunk"): {"task": "Chunking", "oracle": 94.6, "ls": 94.0, "ls_layers": 7, "ccfs": 93.7,
                             "neurons": 600},
    ("sst2", "label"): {"task": "SST-2", "oracle": 90.6, "ls": 88.2, "ls_layers": None, "ccfs": None, "neurons": 30},
    ("mrpc", "label"): {"task": "MRPC", "oracle": 86.0, "ls": 86.0, "ls_layers": None, "ccfs": None, "neurons": 100},
    ("rte", "label"): {"task": "RTE", "oracle": 69.3, "ls": 69.3, "ls_layers": None, "ccfs": None, "neurons": 30},
    ("stsb", "label"): {"task": "STS-B", "oracle": 89.7, "ls": 89.1, "ls_layers": None, "ccfs": None, "neurons": 400},
}
