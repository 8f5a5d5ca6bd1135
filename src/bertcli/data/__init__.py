"""Reading corpora, building examples, HDF5 shards and the datasets pretrain reads."""
