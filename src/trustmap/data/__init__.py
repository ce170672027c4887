"""Datasets: one ``load(ref, split)`` for registry names (official files, embedded and generated
sets) and paths (image folders, .npz files); ``from_torch`` for any torch Dataset."""

from trustmap.data.catalog import DatasetInfo, list_datasets, load, load_sequences
from trustmap.data.dataset import Dataset, check_images, from_uint8
from trustmap.data.fetch import fetch
from trustmap.data.references import from_torch
from trustmap.data.transforms import CROPS, FITS, conform

__all__ = ["Dataset", "check_images", "from_uint8", "load", "load_sequences", "list_datasets",
           "DatasetInfo", "fetch", "CROPS", "FITS", "conform", "from_torch"]
