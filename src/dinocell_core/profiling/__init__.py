"""Image-based profiling: well profiles from embeddings, and the CPJUMP1 copairs benchmark that scores them."""
