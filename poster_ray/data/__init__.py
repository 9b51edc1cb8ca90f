"""Data stage: train.csv -> clean labels -> stratified split -> decoded Parquet cache.

Every later stage (train, tune, evaluate) reads the run directory this stage writes,
so they all see the same genres, split and pixels. Import from the module that holds
the concern:

- `source`: where the dataset is (--data, $POSTER_DATA, or a clone of the public copy)
- `labels`: read and check train.csv, clean the rows, attach each poster's image path
- `split`: the 70/15/15 stratified split, every genre present in every split
- `cache`: posters decoded once per image size, and the reads later stages make of it
- `tables`: Parquet files on any storage (the manifest and every cache)
- `context`: Ray Data settings for the length of a block
- `prepare`: the prepare stage that runs the above and its summary
"""
