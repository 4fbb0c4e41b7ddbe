"""What tracing calls things, in one place: kinds of site, their titles, token classes, metric
symbols, figure suffixes (read by tracing, the figures, the widget and the CLI).

    >>> KINDS, KIND_TITLES["mlp"], SYMBOLS["log_prob"]     # ('resid', 'mlp', 'attn'), 'MLP', 'log p'
"""

KINDS = ("resid", "mlp", "attn")
KIND_TITLES = {"resid": "hidden state", "mlp": "MLP", "attn": "attention"}
TOKEN_CLASSES = ("first_subject", "middle_subject", "last_subject", "first_subsequent", "further", "last")
SYMBOLS = {"prob": "p", "log_prob": "log p", "logit_diff": "logit diff"}  # short metric labels
FIGURE_SUFFIXES = (".pdf", ".svg", ".png", ".html")
