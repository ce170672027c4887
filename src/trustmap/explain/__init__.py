"""Attribution methods and their uncertainty over a predictive's samples."""
