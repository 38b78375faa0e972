"""mva-dagster's definitions with the Celery executor: each step of a run goes to a Celery worker.

    pip install -e '.[scale]' dagster-celery==0.29.27
    dagster-celery worker start -A dagster_celery.app -y deploy/celery/celery.yaml   # on each worker
    dagster-webserver -f deploy/celery/definitions.py                                 # and the daemon

Nothing else changes: the assets, the gateway resource and the proxies are the same (docs/scale-out.md).
"""

import dagster as dg
from dagster_celery import celery_executor

from mva_dagster.definitions import defs as mva_defs

defs = dg.Definitions.merge(mva_defs, dg.Definitions(executor=celery_executor))
