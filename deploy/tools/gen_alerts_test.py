#!/usr/bin/env python3
"""Writes deploy/prometheus/alerts_test.yml (promtool unit tests for alerts.yml).

The cases (input series, evaluation times, expected labels and $value strings) are
written out below; the expected annotations are filled in from alerts.yml's
templates with those labels and values, so editing an annotation text does not mean
editing every test by hand. The output is plain promtool input: `promtool test rules`
then checks it against the real rule evaluation and Go template rendering, so a
wrong expectation here fails there. Run after changing alerts.yml:

    python3 deploy/tools/gen_alerts_test.py && promtool test rules deploy/prometheus/alerts_test.yml
"""
import os
import re

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
rules = {r['alert']: r for g in yaml.safe_load(open(os.path.join(ROOT, 'deploy/prometheus/alerts.yml')))['groups']
         for r in g['rules'] if 'alert' in r}
def render(t, labels, value):
    # {{ if $labels.x }}...{{ end }} (no else, no nesting): kept when the label is set.
    t = re.sub(r'\{\{\s*if\s+\$labels\.(\w+)\s*\}\}(.*?)\{\{\s*end\s*\}\}',
               lambda m: m.group(2) if labels.get(m.group(1)) else '', t)
    t = re.sub(r'\{\{\s*\$labels\.(\w+)\s*\}\}', lambda m: labels.get(m.group(1), ''), t)
    return re.sub(r'\{\{\s*\$value[^}]*\}\}', lambda m: value, t)
def fire(alert, labels, value):
    r = rules[alert]
    lab = dict(labels); lab.update(r['labels'])
    return {'exp_labels': lab, 'exp_annotations': {k: render(v, lab, value) for k, v in r['annotations'].items()}}
def at(t, alert, *alerts):
    return {'eval_time': t, 'alertname': alert, 'exp_alerts': list(alerts)}
J = 'im-callback-forwarder'
A = {'job': J, 'instance': 'forwarder-a:9090'}
B = {'job': J, 'instance': 'forwarder-b:9090'}
def sel(name, labels, **extra):
    l = dict(labels); l.update(extra)
    return name + '{' + ', '.join(f'{k}="{v}"' for k, v in l.items()) + '}'
tests = []
def T(comment, series, checks):
    tests.append({'name': comment, 'interval': '1m', 'input_series': [{'series': s, 'values': v} for s, v in series], 'alert_rule_test': checks})

T('ImcfForwarderDown: an instance that stops answering scrapes fires after 2m; a healthy one never',
  [(sel('up', A), '1 1 0x10'), (sel('up', B), '1x12')],
  [at('3m', 'ImcfForwarderDown'), at('4m', 'ImcfForwarderDown', fire('ImcfForwarderDown', A, '')),
   at('12m', 'ImcfForwarderAbsent')])
T('ImcfForwarderAbsent: no target of the job at all fires after 10m',
  [(sel('up', {'job': 'something-else', 'instance': 'x:1'}), '1x15')],
  [at('9m', 'ImcfForwarderAbsent'), at('10m', 'ImcfForwarderAbsent', fire('ImcfForwarderAbsent', {'job': J}, '')),
   at('12m', 'ImcfForwarderDown')])
T('ImcfForwarderNotReady: one instance not ready for 5m; ImcfNoReadyForwarder stays quiet while another is ready',
  [(sel('imcf_ready', A), '1 1 0x10'), (sel('imcf_ready', B), '1x12')],
  [at('6m', 'ImcfForwarderNotReady'), at('7m', 'ImcfForwarderNotReady', fire('ImcfForwarderNotReady', A, '')),
   at('8m', 'ImcfNoReadyForwarder')])
T('ImcfNoReadyForwarder: every instance not ready for 2m',
  [(sel('imcf_ready', A), '1 1 0x10'), (sel('imcf_ready', B), '1 1 0x10')],
  [at('3m', 'ImcfNoReadyForwarder'), at('4m', 'ImcfNoReadyForwarder', fire('ImcfNoReadyForwarder', {'job': J}, '')),
   at('4m', 'ImcfForwarderNotReady')])
T('ImcfKafkaDeliveryFailures: 3 failed deliveries fire at once, and resolve once 5m pass without more',
  [(sel('imcf_kafka_delivery_failures_total', A), '0x5 1 3x13'), (sel('imcf_kafka_delivery_failures_total', B), '0x20')],
  [at('5m', 'ImcfKafkaDeliveryFailures'), at('8m', 'ImcfKafkaDeliveryFailures', fire('ImcfKafkaDeliveryFailures', A, '3')),
   at('20m', 'ImcfKafkaDeliveryFailures')])
T('ImcfEventsNotDelivered: events queued while nothing is delivered; an instance that delivers never fires',
  [(sel('imcf_kafka_queue_events', A), '0 0 5x20'), (sel('imcf_kafka_delivered_total', A), '0x22'),
   (sel('imcf_kafka_queue_events', B), '0 0 5x20'), (sel('imcf_kafka_delivered_total', B), '0+10x22')],
  [at('6m', 'ImcfEventsNotDelivered'), at('7m', 'ImcfEventsNotDelivered', fire('ImcfEventsNotDelivered', A, '5'))])
T('ImcfKafkaQueueGrowing: a backlog that never empties and keeps growing; a steady one does not fire',
  [(sel('imcf_kafka_queue_events', A), '0+10x40'), (sel('imcf_kafka_queue_events', B), '100x40'),
   (sel('imcf_kafka_delivered_total', A), '0+100x40'), (sel('imcf_kafka_delivered_total', B), '0+100x40')],
  [at('30m', 'ImcfKafkaQueueGrowing'), at('31m', 'ImcfKafkaQueueGrowing', fire('ImcfKafkaQueueGrowing', A, '160')),
   at('31m', 'ImcfEventsNotDelivered')])
T('ImcfCallbacksUnavailable: 503 answers fire at once; accepted callbacks do not',
  [(sel('imcf_callbacks_total', A, outcome='unavailable'), '0x5 2x15'), (sel('imcf_callbacks_total', A, outcome='accepted'), '0+100x20'),
   (sel('imcf_callbacks_total', B, outcome='unavailable'), '0x20')],
  [at('4m', 'ImcfCallbacksUnavailable'), at('8m', 'ImcfCallbacksUnavailable', fire('ImcfCallbacksUnavailable', A, '2')),
   at('20m', 'ImcfCallbacksUnavailable')])
H = 'imcf_ack_duration_seconds_bucket'
T('ImcfAckLatencyHigh: every answer between 0.5 s and 1 s, p99 995ms, fires after 10m',
  [(sel(H, A, le='0.1'), '0x20'), (sel(H, A, le='0.5'), '0x20'), (sel(H, A, le='1'), '0+100x20'), (sel(H, A, le='+Inf'), '0+100x20')],
  [at('10m', 'ImcfAckLatencyHigh'), at('11m', 'ImcfAckLatencyHigh', fire('ImcfAckLatencyHigh', {'job': J}, '995ms'))])
T('ImcfAckLatencyHigh: fast answers (under 100 ms) never fire',
  [(sel(H, A, le='0.1'), '0+100x20'), (sel(H, A, le='0.5'), '0+100x20'), (sel(H, A, le='1'), '0+100x20'), (sel(H, A, le='+Inf'), '0+100x20')],
  [at('12m', 'ImcfAckLatencyHigh'), at('20m', 'ImcfAckLatencyHigh')])
E = 'imcf_exceptions_total'
T('ImcfExceptionSurge: rate_limited jumps from 0.1/s to 1/s; a surge of another category, a small rise from zero (under the floor) and a steady high rate do not fire',
  [(sel(E, A, category='rate_limited'), '0+6x90 600+60x20'),
   (sel(E, A, category='unknown'), '0+6x90 600+60x20'),
   (sel(E, A, category='content_moderated'), '0x90 6+6x20'),
   (sel(E, A, category='sender_muted'), '0+120x110')],
  [at('90m', 'ImcfExceptionSurge'), at('102m', 'ImcfExceptionSurge'),
   at('103m', 'ImcfExceptionSurge', fire('ImcfExceptionSurge', {'job': J, 'category': 'rate_limited'}, '1'))])
C = 'imcf_callbacks_total'
T('ImcfAuthRefusals: 6 refusals a minute over two instances and two outcomes pass 20 per 10 min at 4m and fire 5m later',
  [(sel(C, A, outcome='bad_sign'), '0+5x30'), (sel(C, B, outcome='missing_sign'), '0+1x30'), (sel(C, A, outcome='accepted'), '0+50x30')],
  [at('8m', 'ImcfAuthRefusals'), at('9m', 'ImcfAuthRefusals', fire('ImcfAuthRefusals', {'job': J}, '54')),
   at('20m', 'ImcfAuthRefusals', fire('ImcfAuthRefusals', {'job': J}, '60'))])
T('ImcfAuthRefusals: a trickle (10 in 10 min) and other refusals (not_found, invalid_json) do not fire',
  [(sel(C, A, outcome='stale_request_time'), '0+1x30'), (sel(C, A, outcome='not_found'), '0+50x30'), (sel(C, A, outcome='invalid_json'), '0+50x30')],
  [at('20m', 'ImcfAuthRefusals'), at('30m', 'ImcfAuthRefusals')])
T('ImcfCallbacksUnavailable: spool_full refusals (503, the spool at --spool-max-bytes) fire at once as well',
  [(sel(C, A, outcome='spool_full'), '0x5 3x15'), (sel(C, A, outcome='accepted'), '0+100x20')],
  [at('5m', 'ImcfCallbacksUnavailable'), at('8m', 'ImcfCallbacksUnavailable', fire('ImcfCallbacksUnavailable', A, '3'))])
T('ImcfAuthRefusals: source_not_allowed refusals (outside --allow-cidr) count too: 5 a minute pass 20 per 10 min at 5m and fire 5m later',
  [(sel(C, A, outcome='source_not_allowed'), '0+5x30'), (sel(C, A, outcome='accepted'), '0+50x30')],
  [at('9m', 'ImcfAuthRefusals'), at('10m', 'ImcfAuthRefusals', fire('ImcfAuthRefusals', {'job': J}, '50'))])
T('ImcfDeadLetters: one dead letter fires at once and resolves 15m later',
  [(sel('imcf_dead_letters_total', A), '0x5 1x20')],
  [at('4m', 'ImcfDeadLetters'), at('10m', 'ImcfDeadLetters', fire('ImcfDeadLetters', {'job': J}, '1')), at('25m', 'ImcfDeadLetters')])

L = 'imcf_events_lost_total'
T('ImcfEventsLost: one lost event fires at once and resolves 30m later; an instance that loses nothing never fires',
  [(sel(L, A), '0x5 1x40'), (sel(L, B), '0x45')],
  [at('5m', 'ImcfEventsLost'), at('6m', 'ImcfEventsLost', fire('ImcfEventsLost', A, '1')),
   at('35m', 'ImcfEventsLost', fire('ImcfEventsLost', A, '1')), at('36m', 'ImcfEventsLost')])
T('ImcfEventsLost: an instance first scraped with losses already counted (lost while starting) fires for 30m; a restart at 0 does not',
  [(sel(L, A), '_x5 3x40'), (sel(L, B), '_x5 0x40')],
  [at('5m', 'ImcfEventsLost', fire('ImcfEventsLost', A, '3')), at('34m', 'ImcfEventsLost', fire('ImcfEventsLost', A, '3')),
   at('35m', 'ImcfEventsLost')])
T('ImcfSpoolFilling: 90% of --spool-max-bytes for 5m fires; 50%, and a spool-less instance (max 0), do not',
  [(sel('imcf_spool_bytes', A), '0+100x9 900x20'), (sel('imcf_spool_max_bytes', A), '1000x30'),
   (sel('imcf_spool_bytes', B), '500x30'), (sel('imcf_spool_max_bytes', B), '1000x30'),
   (sel('imcf_spool_bytes', {'job': J, 'instance': 'forwarder-c:9090'}), '500x30'),
   (sel('imcf_spool_max_bytes', {'job': J, 'instance': 'forwarder-c:9090'}), '0x30')],
  [at('13m', 'ImcfSpoolFilling'), at('14m', 'ImcfSpoolFilling', fire('ImcfSpoolFilling', A, '90%'))])
S = 'imcf_spool_events'
D = 'imcf_kafka_delivered_total'
Cc = {'job': J, 'instance': 'forwarder-c:9090'}
T('ImcfSpoolBacklogNotDraining: a backlog stuck for 15m fires; one that drains, and records merely in flight under load, do not',
  [(sel(S, A), '0 0 50x30'), (sel(D, A), '0x32'),
   (sel(S, B), '0 0 900-20x30'), (sel(D, B), '0+60x32'),
   (sel(S, Cc), '5x32'), (sel(D, Cc), '0+6000x32')],
  [at('16m', 'ImcfSpoolBacklogNotDraining'), at('17m', 'ImcfSpoolBacklogNotDraining', fire('ImcfSpoolBacklogNotDraining', A, '50')),
   at('30m', 'ImcfSpoolBacklogNotDraining', fire('ImcfSpoolBacklogNotDraining', A, '50'))])
Q = 'imcf_spool_quarantined_total'
T('ImcfSpoolQuarantine: damaged regions found while recovering at start (first scrape already 2) fire for 30m; a clean spool never',
  [(sel(Q, A), '_x3 2x40'), (sel(Q, B), '0x45')],
  [at('3m', 'ImcfSpoolQuarantine', fire('ImcfSpoolQuarantine', A, '2')), at('32m', 'ImcfSpoolQuarantine', fire('ImcfSpoolQuarantine', A, '2')),
   at('33m', 'ImcfSpoolQuarantine')])
T('ImcfSpoolQuarantine: an increase while running fires at once',
  [(sel(Q, A), '0x5 1x10')],
  [at('5m', 'ImcfSpoolQuarantine'), at('6m', 'ImcfSpoolQuarantine', fire('ImcfSpoolQuarantine', A, '1'))])

T('ImcfForwarderAbsent: one of two namespaces loses every target (the other still scraped) fires after 10m, naming it',
  [(sel('up', {'namespace': 'im-a', 'job': J, 'instance': 'forwarder-a:9090'}), '1x30'),
   (sel('up', {'namespace': 'im-b', 'job': J, 'instance': 'forwarder-b:9090'}), '1x5 stale')],
  [at('5m', 'ImcfForwarderAbsent'), at('15m', 'ImcfForwarderAbsent'),
   at('16m', 'ImcfForwarderAbsent', fire('ImcfForwarderAbsent', {'namespace': 'im-b', 'job': J}, ''))])
T('ImcfForwarderAbsent: two namespaces both scraped all along stay quiet',
  [(sel('up', {'namespace': 'im-a', 'job': J, 'instance': 'forwarder-a:9090'}), '1x30'),
   (sel('up', {'namespace': 'im-b', 'job': J, 'instance': 'forwarder-b:9090'}), '1x30')],
  [at('20m', 'ImcfForwarderAbsent'), at('30m', 'ImcfForwarderAbsent')])
M = 'imcf_kafka_metadata_last_success_timestamp_seconds'
Cn = {'job': J, 'instance': 'forwarder-c:9090'}
T('Kafka down while every pod stays ready: the metadata timestamp of A freezes at 6m (age > 60 s at 8m) and ImcfKafkaMetadataStale fires 1m later; ImcfForwarderNotReady and ImcfNoReadyForwarder stay quiet (imcf_ready 1 all along); B, whose metadata stays fresh, never fires',
  [(sel('imcf_ready', A), '1x30'), (sel('imcf_ready', B), '1x30'),
   (sel(M, A), '60+60x5 360x25'), (sel(M, B), '60+60x30'),
   (sel('process_start_time_seconds', A), '0x30'), (sel('process_start_time_seconds', B), '0x30'),
   (sel('imcf_kafka_up', A), '1x5 0x25'), (sel('imcf_kafka_up', B), '1x30')],
  [at('8m', 'ImcfKafkaMetadataStale'),
   at('9m', 'ImcfKafkaMetadataStale', fire('ImcfKafkaMetadataStale', A, '3m 0s')),
   at('20m', 'ImcfForwarderNotReady'), at('20m', 'ImcfNoReadyForwarder')])
T('ImcfKafkaMetadataStale: an instance started at 2m that never got metadata (timestamp 0) fires once it has run over 60 s (+1m), not earlier: the 0 is never read as a 1970 timestamp',
  [(sel(M, Cn), '0x20'), (sel('process_start_time_seconds', Cn), '120x20'), (sel('imcf_ready', Cn), '1x20')],
  [at('3m', 'ImcfKafkaMetadataStale'), at('4m', 'ImcfKafkaMetadataStale'),
   at('5m', 'ImcfKafkaMetadataStale', fire('ImcfKafkaMetadataStale', Cn, '3m 0s'))])
T('ImcfKafkaTopicMissing: a missing topic for 2m fires; an instance that sees every topic does not',
  [(sel('imcf_kafka_topics_missing', A), '0x3 1x10'), (sel('imcf_kafka_topics_missing', B), '0x14')],
  [at('5m', 'ImcfKafkaTopicMissing'), at('6m', 'ImcfKafkaTopicMissing', fire('ImcfKafkaTopicMissing', A, '1'))])
T('ImcfKafkaProducerRestarts: one producer rebuild fires at once and resolves 15m later',
  [(sel('imcf_kafka_producer_restarts_total', A), '0x5 1x25'), (sel('imcf_kafka_producer_restarts_total', B), '0x30')],
  [at('5m', 'ImcfKafkaProducerRestarts'), at('10m', 'ImcfKafkaProducerRestarts', fire('ImcfKafkaProducerRestarts', A, '1')),
   at('25m', 'ImcfKafkaProducerRestarts')])
KSM = {'job': 'kube-state-metrics', 'namespace': 'im'}
def claim(n, **extra):
    return dict(KSM, persistentvolumeclaim=f'spool-im-callback-forwarder-{n}', **extra)
def pod(n, **extra):
    return dict(KSM, pod=f'im-callback-forwarder-{n}', **extra)
T('ImcfSpoolParked: claim 2 loses its pod at 6m (scale-down) and claim 1 its running pod at 11m (dead node): each fires after 10m; claim 0 (running pod) and another app\'s claim without pod never',
  [(sel('kube_persistentvolumeclaim_info', claim(n, storageclass='ssd', volumename=f'pv-{n}')), '1x40') for n in range(3)]
  + [(sel('kube_persistentvolumeclaim_info', dict(KSM, persistentvolumeclaim='data-postgres-0', storageclass='ssd', volumename='pv-pg')), '1x40')]
  + [(sel('kube_pod_spec_volumes_persistentvolumeclaims_info', pod(0, persistentvolumeclaim='spool-im-callback-forwarder-0', volume='spool')), '1x40'),
     (sel('kube_pod_spec_volumes_persistentvolumeclaims_info', pod(1, persistentvolumeclaim='spool-im-callback-forwarder-1', volume='spool')), '1x40'),
     (sel('kube_pod_spec_volumes_persistentvolumeclaims_info', pod(2, persistentvolumeclaim='spool-im-callback-forwarder-2', volume='spool')), '1x5 stale'),
     (sel('kube_pod_status_phase', pod(0, phase='Running')), '1x40'),
     (sel('kube_pod_status_phase', pod(1, phase='Running')), '1x10 0x30'),
     (sel('kube_pod_status_phase', pod(1, phase='Unknown')), '0x10 1x30'),
     (sel('kube_pod_status_phase', pod(2, phase='Running')), '1x5 stale')],
  [at('15m', 'ImcfSpoolParked'),
   at('16m', 'ImcfSpoolParked', fire('ImcfSpoolParked', claim(2, storageclass='ssd', volumename='pv-2'), '1')),
   at('21m', 'ImcfSpoolParked', fire('ImcfSpoolParked', claim(2, storageclass='ssd', volumename='pv-2'), '1'),
      fire('ImcfSpoolParked', claim(1, storageclass='ssd', volumename='pv-1'), '1'))])
T('ImcfSpoolParked: a StatefulSet with every claim mounted by a running pod stays quiet',
  [(sel('kube_persistentvolumeclaim_info', claim(0, storageclass='ssd', volumename='pv-0')), '1x30'),
   (sel('kube_pod_spec_volumes_persistentvolumeclaims_info', pod(0, persistentvolumeclaim='spool-im-callback-forwarder-0', volume='spool')), '1x30'),
   (sel('kube_pod_status_phase', pod(0, phase='Running')), '1x30')],
  [at('20m', 'ImcfSpoolParked')])
NG = 'nginx_ingress_controller_requests'
ING = {'job': 'ingress-nginx', 'namespace': 'im', 'ingress': 'im-callback-forwarder', 'service': 'im-callback-forwarder', 'method': 'POST'}
T('ImcfIngressErrors: 503s (no pod took it after the retry) and 413s at the edge fire at once; 200s, and 500s of another Ingress, do not',
  [(sel(NG, dict(ING, status='200')), '0+100x20'), (sel(NG, dict(ING, status='503')), '0x5 3x15'), (sel(NG, dict(ING, status='413')), '0x5 1x15'),
   (sel(NG, dict(ING, ingress='other-app', service='other-app', status='500')), '0+10x20')],
  [at('5m', 'ImcfIngressErrors'),
   at('8m', 'ImcfIngressErrors', fire('ImcfIngressErrors', {'namespace': 'im', 'ingress': 'im-callback-forwarder', 'status': '503'}, '3'),
      fire('ImcfIngressErrors', {'namespace': 'im', 'ingress': 'im-callback-forwarder', 'status': '413'}, '1')),
   at('20m', 'ImcfIngressErrors')])

doc = {'rule_files': ['alerts.yml'], 'evaluation_interval': '1m', 'tests': tests}
class D(yaml.SafeDumper): pass
def str_rep(d, s):
    return d.represent_scalar('tag:yaml.org,2002:str', s, style='"' if ('{' in s or ':' in s or '"' in s) and '\n' not in s else None)
D.add_representer(str, str_rep)
hdr = """# promtool unit tests for alerts.yml: `promtool test rules deploy/prometheus/alerts_test.yml`.
# Every alert has a case where it fires (with its rendered labels and annotations)
# and at least one where it must stay quiet (pending, resolved, or a look-alike input).
# .ci/check-deploy also checks that every alert of alerts.yml appears here both ways.
# GENERATED by deploy/tools/gen_alerts_test.py (the cases are written there).
"""
out = yaml.dump(doc, Dumper=D, sort_keys=False, width=10000, allow_unicode=True)
open(os.path.join(ROOT, 'deploy/prometheus/alerts_test.yml'), 'w').write(hdr + out)
