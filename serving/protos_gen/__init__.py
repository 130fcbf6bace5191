"""Generated from protos/recsys/v1 by serving/gen_protos.py; do not edit."""
