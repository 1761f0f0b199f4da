"""Inference: from a trained model (a run, a cv run, an ensemble or an exported file) to
probabilities, a submission and metrics.

`predictor.load_predictor` turns any of them into one `Predictor`; `predict.predict`,
`predict.evaluate` and `predict.compose` read images the way the model was trained to
see them and write the prediction table and submission into a new folder.
`members` holds the torch module that makes a cv run or an ensemble one model.
"""
