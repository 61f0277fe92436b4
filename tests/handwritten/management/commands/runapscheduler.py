"""A project's own ``runapscheduler``, written before the built-in one existed."""

from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "The project's own scheduler command."

    def add_arguments(self, parser):
        parser.add_argument("--own-option", default="none")

    def handle(self, *args, own_option="none", **options):
        self.stdout.write(f"handwritten runapscheduler ran (own option: {own_option})")
