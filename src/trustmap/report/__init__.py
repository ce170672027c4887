"""The page engine (``page``), the plotting helpers (``plot``), the figures and the results types
pages read; each study's page lives with its study (``trustmap.studies.*_page``)."""
