"""Studies: each wires the layers above into one of the seed studies; `trustmap run` runs them."""
