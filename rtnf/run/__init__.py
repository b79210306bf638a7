"""The run: the loop that takes volumes from the scanner stage through the analysis to the wire.

``session`` runs one run (threads, publishing, the end of the run),
``pipeline`` processes one volume, ``record`` writes the BIDS outputs,
``publish`` sends messages, ``runlock`` keeps two runs out of one output
folder, ``study_session`` runs a day's runs in order.
"""
