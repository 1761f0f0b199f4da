"""Curation: the data-centric stage after training: which labels are probably wrong
(`audit`, with its review page in `review`), and where more labels come from
(pseudo-labels of unlabelled images).
"""
