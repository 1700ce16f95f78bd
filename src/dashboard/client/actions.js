// The operator's actions: switchover, add a server, remove a server, change K. Each form opens a
// confirmation dialog that says what will happen and what it costs, then calls the manager's
// existing API and shows its answer — the refusal message when the manager says no. The manager
// decides; the page only asks.
/* global HTMLFormElement, HTMLSelectElement, HTMLInputElement, HTMLButtonElement, HTMLDialogElement, HTMLElement, AbortSignal */
import { byId, duration, h, plural } from './dom.js';

/**
 * @typedef {import('../model.ts').DashboardView} DashboardView
 * @typedef {import('../model.ts').ServerRow} ServerRow
 * @typedef {{ title: string, body: (HTMLElement | string)[], confirm: string, danger?: boolean }} Confirmation
 */

/** An operator's request that takes longer than this is reported as failed (it may still apply). */
const requestTimeoutMs = 10_000;

/**
 * Calls the manager's API and turns its answer into one sentence.
 * @param {string} method
 * @param {string} path
 * @param {unknown} body
 * @returns {Promise<{ ok: boolean, text: string }>}
 */
async function call(method, path, body) {
  let response;
  try {
    response = await fetch(path, {
      method, headers: { 'content-type': 'application/json' }, body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(requestTimeoutMs),
    });
  } catch (error) {
    return { ok: false, text: `Could not reach the manager: ${error instanceof Error ? error.message : String(error)}` };
  }
  /** @type {{ message?: string, error?: { message?: string } } | null} */
  let answer = null;
  try {
    answer = await response.json();
  } catch {
    // A body that is not JSON: the status says enough.
  }
  if (response.ok) return { ok: true, text: `Accepted: ${answer?.message ?? `HTTP ${response.status}`}` };
  const reason = answer?.error?.message ?? `HTTP ${response.status}`;
  const prefix = response.status === 409 ? 'Refused' : response.status === 400 ? 'Not sent as asked' : `Failed (HTTP ${response.status})`;
  return { ok: false, text: `${prefix}: ${reason}` };
}

/**
 * Shows the confirmation dialog; resolves true if the operator confirmed.
 * @param {Confirmation} confirmation
 * @returns {Promise<boolean>}
 */
function confirmWith(confirmation) {
  const dialog = byId('confirm-dialog', HTMLDialogElement);
  byId('confirm-title', HTMLElement).textContent = confirmation.title;
  byId('confirm-body', HTMLElement).replaceChildren(...confirmation.body.map((part) => (typeof part === 'string' ? h('p', {}, part) : part)));
  const ok = byId('confirm-ok', HTMLButtonElement);
  ok.textContent = confirmation.confirm;
  ok.classList.toggle('danger', confirmation.danger === true);
  dialog.returnValue = '';
  dialog.showModal();
  byId('confirm-cancel', HTMLButtonElement).focus();
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => resolve(dialog.returnValue === 'confirm'), { once: true });
  });
}

/**
 * @param {boolean} ok
 * @param {string} text
 */
function showResult(ok, text) {
  const result = byId('action-result', HTMLElement);
  result.textContent = text;
  result.dataset.outcome = ok ? 'accepted' : 'refused';
}

/**
 * Wires a form: on submit, build the confirmation and the request from its fields; nothing is
 * sent unless the operator confirms.
 * @param {string} formId
 * @param {() => { confirmation: Confirmation, method: string, path: string, body?: unknown } | string} prepare  a string is a problem to show instead
 */
function wire(formId, prepare) {
  const form = byId(formId, HTMLFormElement);
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    const prepared = prepare();
    if (typeof prepared === 'string') {
      showResult(false, prepared);
      return;
    }
    const submit = form.querySelector('button[type="submit"]');
    void (async () => {
      if (!(await confirmWith(prepared.confirmation))) return;
      if (submit instanceof HTMLButtonElement) submit.disabled = true;
      showResult(true, `${prepared.confirmation.title}: sending…`);
      try {
        const { ok, text } = await call(prepared.method, prepared.path, prepared.body);
        showResult(ok, text);
      } finally {
        if (submit instanceof HTMLButtonElement) submit.disabled = false;
      }
    })();
  });
}

/**
 * @param {DashboardView | null} view
 * @param {string} id
 * @returns {ServerRow | undefined}
 */
const rowOf = (view, id) => view?.servers.find((row) => row.id === id);

/**
 * What a switchover to `row` costs, in words.
 * @param {ServerRow} row
 */
function switchoverCost(row) {
  const lacks = row.lag === null ? null : row.lag.entries;
  if (lacks === null) return `${row.id}'s position is unknown.`;
  const behind = row.lag?.ms === null || row.lag?.ms === undefined || lacks === 0 ? '' : ` (about ${duration(row.lag.ms)} behind)`;
  return lacks === 0 ? `${row.id} has every entry the main logged: writes pause only for the hand-over.` : `${row.id} lacks ${plural(lacks, 'entry', 'entries')}${behind}: writes pause until it has them.`;
}

/**
 * Wires the four forms; `currentView` returns the latest view, for the confirmations' wording.
 * @param {() => DashboardView | null} currentView
 */
export function setupActions(currentView) {
  wire('switchover-form', () => {
    const view = currentView();
    if (view === null || view.main === null) return 'There is no main to switch over from.';
    const chosen = byId('switchover-target', HTMLSelectElement).value;
    const target = chosen === '' ? view.safeCandidates[0] : chosen;
    const row = target === undefined ? undefined : rowOf(view, target);
    const body = [
      `The main ${view.main} pauses writes until ${chosen === '' ? `the best candidate${target === undefined ? '' : ` (now ${target})`}` : chosen} holds its whole log, at most about 2 s; then the manager fences epoch ${view.epoch} and appoints it in epoch ${view.epoch + 1}. Nothing acknowledged is lost.`,
    ];
    if (row !== undefined) body.push(switchoverCost(row));
    if (row !== undefined && row.candidacy.verdict === 'unsafe') body.push(`${row.id} is not a safe candidate now (${row.candidacy.reason}): the manager may refuse.`);
    if (chosen === '' && target === undefined) body.push('No standby is a safe candidate now: the manager may refuse.');
    return {
      confirmation: { title: `Switch the main role from ${view.main} to ${chosen === '' ? 'the best candidate' : chosen}`, body, confirm: 'Switch over' },
      method: 'POST', path: '/v1/switchover', body: chosen === '' ? {} : { to: chosen },
    };
  });

  wire('add-form', () => {
    const id = byId('add-id', HTMLInputElement).value.trim();
    const address = byId('add-address', HTMLInputElement).value.trim();
    const peerAddress = byId('add-peer-address', HTMLInputElement).value.trim();
    const priorityText = byId('add-priority', HTMLInputElement).value.trim();
    if (id === '' || address === '' || peerAddress === '') return 'To add a server, give its id, its client address and its peer address.';
    /** @type {{ id: string, address: string, peerAddress: string, priority?: number }} */
    const body = { id, address, peerAddress };
    if (priorityText !== '') body.priority = Number(priorityText);
    return {
      confirmation: {
        title: `Add ${id}`, confirm: 'Add server',
        body: [
          `${id} (client ${address}, peer ${peerAddress}) joins as a learner, catches up from the main, and is promoted to standby once it is close behind.`,
          `Start its process first, pointed at this manager; until it reports, it is listed as a learner that is down.`,
        ],
      },
      method: 'POST', path: '/v1/servers', body,
    };
  });

  wire('remove-form', () => {
    const view = currentView();
    const id = byId('remove-id', HTMLSelectElement).value;
    if (id === '') return 'Choose a server to remove.';
    const row = rowOf(view, id);
    const body = [
      row?.role === 'standby'
        ? `${id} is first demoted to learner and removed once the main confirms that every committed write is on K standbys without it.`
        : `${id} is removed from the cluster.`,
      'Stop its process afterwards: the manager no longer sends it anything.',
    ];
    if (view !== null && row?.candidacy.verdict === 'safe' && view.safeCandidates.length === 1) body.push(`${id} is the only safe failover candidate now.`);
    return { confirmation: { title: `Remove ${id}`, body, confirm: 'Remove server', danger: true }, method: 'DELETE', path: `/v1/servers/${encodeURIComponent(id)}` };
  });

  wire('k-form', () => {
    const view = currentView();
    const text = byId('k-value', HTMLInputElement).value.trim();
    const ackQuorum = Number(text);
    if (text === '' || !Number.isInteger(ackQuorum) || ackQuorum < 0) return 'K must be a whole number, 0 or more.';
    const from = view?.ackQuorum;
    const body = [];
    if (from !== undefined && ackQuorum > from) {
      body.push(`Writes will wait until ${plural(ackQuorum, 'standby has', 'standbys have')} each one durably. The manager refuses unless that many standbys report with complete logs; until the main confirms the raise, failover follows both the old and the new rule.`);
    } else if (ackQuorum === 0) {
      body.push('K = 0 is asynchronous replication: writes are acknowledged once durable on the main alone, and a failover may lose the latest acknowledged writes.');
    } else {
      body.push(`Writes will wait for ${plural(ackQuorum, 'standby', 'standbys')} instead of ${from ?? '?'}: a failover then needs fence replies from more standbys.`);
    }
    return {
      confirmation: { title: `Change K from ${from ?? '?'} to ${ackQuorum}`, body, confirm: 'Change K', danger: ackQuorum === 0 },
      method: 'PUT', path: '/v1/ack-quorum', body: { ackQuorum },
    };
  });

  const dialog = byId('confirm-dialog', HTMLDialogElement);
  byId('confirm-cancel', HTMLButtonElement).addEventListener('click', () => dialog.close('cancel'));
  byId('confirm-ok', HTMLButtonElement).addEventListener('click', () => dialog.close('confirm'));
}

/**
 * Fills `select` with `options` ([value, label]), keeping the operator's choice if it is still offered.
 * @param {HTMLSelectElement} select
 * @param {[string, string][]} options
 */
function fill(select, options) {
  const key = JSON.stringify(options);
  if (select.dataset.options === key) return;
  const chosen = select.value;
  select.replaceChildren(...options.map(([value, label]) => h('option', { value }, label)));
  select.dataset.options = key;
  if (options.some(([value]) => value === chosen)) select.value = chosen;
}

/**
 * Keeps the forms' choices in step with the cluster: switchover targets are the standbys (each
 * with its candidacy), removable servers are all but the main, and K shows its current value.
 * @param {DashboardView} view
 */
export function updateActionChoices(view) {
  const verdictOf = /** @param {ServerRow} row */ (row) => (row.candidacy.verdict === 'safe' ? 'safe' : row.candidacy.verdict === 'unsafe' ? 'not safe now' : row.candidacy.verdict);
  const best = view.safeCandidates[0];
  fill(byId('switchover-target', HTMLSelectElement), [
    ['', `Best candidate${best === undefined ? '' : ` (now ${best})`}`],
    ...view.servers.filter((row) => row.role === 'standby' && row.id !== view.main).map((row) => /** @type {[string, string]} */ ([row.id, `${row.id} — ${verdictOf(row)}`])),
  ]);
  fill(byId('remove-id', HTMLSelectElement), [
    ['', 'Choose a server'],
    ...view.servers.filter((row) => row.id !== view.main).map((row) => /** @type {[string, string]} */ ([row.id, `${row.id} (${row.role})`])),
  ]);
  const k = byId('k-value', HTMLInputElement);
  if (k.dataset.current !== String(view.ackQuorum)) {
    // Follow K as it changes, unless the operator is typing a new value.
    if (k.value === '' || k.value === k.dataset.current) k.value = String(view.ackQuorum);
    k.dataset.current = String(view.ackQuorum);
  }
  byId('k-current', HTMLElement).textContent = `Now K = ${view.ackQuorum}, with ${plural(view.servers.filter((row) => row.role === 'standby' && row.id !== view.main).length, 'standby', 'standbys')} besides the main.`;
}
