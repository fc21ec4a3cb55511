"""Entry point for running from a checkout: ``python cli.py ...`` == ``skipat-deploy ...``."""

from skipat_deploy.cli import main

if __name__ == "__main__":
    main()
