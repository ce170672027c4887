"""Figures and reports: the last layer, which only draws and writes what others computed."""
