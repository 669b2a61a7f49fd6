"""Prediction: views of each test input through a loaded model, inverted and voted into ranked attempts
(`infer`); a challenges file predicted end to end, with its fallbacks, time budget and rank sharding
(`challenges`, shared by stages.predict, the budgeted submit and the Kaggle notebook); and checkpoint ensembles
pooling several models' votes (`ensemble`)."""
