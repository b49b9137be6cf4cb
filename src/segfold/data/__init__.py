"""segfold.data: competition data in, tensors out.

Modules (imported on use, so that reading a config stays light):
`rle` (Kaggle run-length codec), `config` (the `data` section), `formats` (readers ->
`Annotations`), `images` (file IO), `transforms` (albumentations from YAML), `dataset`
(`SegmentationDataset`), `sampler` (`PositiveShareSampler`), `folds` (`folds.csv`), `writers`
(labels written in any format, the inverse of `formats`), `pseudo` (pseudo-label folders), `demo`
(the synthetic demo competition).
"""
