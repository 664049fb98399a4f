"""Entry point: ``python -m beam_pipeline --input ... --output ... [Beam options]``."""

from beam_pipeline.main import main

if __name__ == "__main__":
    main()
