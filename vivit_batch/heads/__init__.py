"""Your own classes from an output's stored embeddings: `train-head` fits a linear softmax head
on the rows that have a truth value and saves it with the backbone as a checkpoint of the new
classes (`train.py`: the examples `examples.py`, the fit and its evaluation `fit.py`, the
checkpoint `checkpoint.py`); `relabel` applies such a head to every stored embedding and commits
the result as the output's new version (`relabel.py`).

Nothing is imported here: `relabel` loads neither scikit-learn nor torch."""
