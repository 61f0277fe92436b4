# All metadata lives in setup.cfg; this file lets older tools install the package.
from setuptools import setup

setup()
