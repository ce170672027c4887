"""Datasets: one ``load(name, split)`` for official files, embedded data and generated sets."""

from trustmap.data.catalog import DatasetInfo, list_datasets, load, load_sequences
from trustmap.data.dataset import Dataset, check_images
from trustmap.data.fetch import fetch
from trustmap.data.transforms import CROPS

__all__ = ["Dataset", "check_images", "load", "load_sequences", "list_datasets", "DatasetInfo",
           "fetch", "CROPS"]
