/**
 * "Submit as job…": a dialog for a notebook or script of the server, then POST api/kqi/submit.
 */
import { Dialog, Notification, showDialog } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';

import { IDataset, IJob, IProfile, kqiGet, kqiPost } from './api';

export type Mode = 'script' | 'notebook-script' | 'papermill';

export interface ISubmission {
  path: string;
  mode: Mode;
  command?: string;
  include?: string[];
  parameters?: Record<string, unknown>;
  name?: string;
  profile?: string;
  datasets?: string[];
  parent?: number;
  purpose?: string;
  env?: Record<string, string>;
  timeout_seconds?: number;
}

const quote = (s: string): string =>
  /^[A-Za-z0-9_./=:,+-]+$/.test(s) ? s : `'${s.replace(/'/g, `'"'"'`)}'`;

/** The command a mode runs (what the server builds when the command is left as is). */
export function defaultCommand(mode: Mode, fileName: string): string {
  if (mode === 'script') {
    return `python ${quote(fileName)}`;
  }
  if (mode === 'notebook-script') {
    return `ipython --colors=NoColor ${quote(fileName.replace(/\.ipynb$/, '.py'))}`;
  }
  return `kqi-papermill ${quote(fileName)} "\${KQI_ROOT:-/kqi}"/output/${quote(fileName)}`;
}

/** "KEY=value" lines → object; throws on a line without "=". */
export function parsePairs(text: string, what: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (!line || line.startsWith('#')) {
      continue;
    }
    const eq = line.indexOf('=');
    if (eq < 1) {
      throw new Error(`${what}: "${line}" is not NAME=value`);
    }
    out[line.slice(0, eq).trim()] = line.slice(eq + 1).trim();
  }
  return out;
}

/** papermill parameters: values are read as JSON where they parse (numbers, true, lists). */
function parseParameters(text: string): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(parsePairs(text, 'Parameters'))) {
    try {
      out[k] = JSON.parse(v);
    } catch {
      out[k] = v;
    }
  }
  return out;
}

function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string> = {},
  text = ''
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    node.setAttribute(k, v);
  }
  if (text) {
    node.textContent = text;
  }
  return node;
}

interface ICatalog {
  datasets: IDataset[];
  profiles: IProfile[];
  jobs: IJob[];
  problems: string[];
}

async function catalog(): Promise<ICatalog> {
  const problems: string[] = [];
  const get = async <T>(path: string, what: string): Promise<T[]> => {
    try {
      return await kqiGet<T[]>(path);
    } catch (e) {
      problems.push(`${what}: ${(e as Error).message}`);
      return [];
    }
  };
  const [datasets, profiles, jobs] = await Promise.all([
    get<IDataset>('datasets', 'datasets'),
    get<IProfile>('profiles', 'profiles'),
    get<IJob>('jobs', 'jobs')
  ]);
  return { datasets, profiles, jobs, problems };
}

/** The dialog's body: a form whose value is the submission. */
class SubmitForm extends Widget {
  constructor(
    private readonly path: string,
    data: ICatalog
  ) {
    super();
    this.addClass('kqi-form');
    const fileName = path.split('/').pop() || path;
    const notebook = fileName.endsWith('.ipynb');
    const node = this.node;
    const row = (label: string, input: HTMLElement, hint = ''): void => {
      const lab = el('label', { class: 'kqi-row' });
      lab.appendChild(el('span', { class: 'kqi-label' }, label));
      lab.appendChild(input);
      if (hint) {
        lab.appendChild(el('span', { class: 'kqi-hint' }, hint));
      }
      node.appendChild(lab);
    };
    node.appendChild(el('div', { class: 'kqi-file' }, `File: ${path}`));
    for (const p of data.problems) {
      node.appendChild(el('div', { class: 'kqi-error' }, p));
    }

    this.name = el('input', { name: 'name', type: 'text' }) as HTMLInputElement;
    this.name.value = fileName.replace(/\.(ipynb|py)$/, '');
    row('Name', this.name);

    this.mode = el('select', { name: 'mode' });
    const modes: [Mode, string][] = notebook
      ? [
          ['notebook-script', 'Notebook as script'],
          ['papermill', 'Notebook with papermill (parameters)']
        ]
      : [['script', 'Script']];
    for (const [value, label] of modes) {
      this.mode.appendChild(el('option', { value }, label));
    }
    row('Mode', this.mode);

    this.parameters = el('textarea', {
      name: 'parameters',
      rows: '2',
      placeholder: 'epochs=10\nlr=0.001'
    });
    const paramRow = el('div', { class: 'kqi-params' });
    node.appendChild(paramRow);

    this.command = el('input', { name: 'command', type: 'text' });
    this.command.value = this.prefill = defaultCommand(this.mode.value as Mode, fileName);
    row('Command', this.command, 'runs in /kqi/code; output goes to /kqi/output');
    const lab = el('label', { class: 'kqi-row' });
    lab.appendChild(el('span', { class: 'kqi-label' }, 'Parameters'));
    lab.appendChild(this.parameters);
    lab.appendChild(el('span', { class: 'kqi-hint' }, 'one NAME=value a line (papermill)'));
    paramRow.appendChild(lab);
    const showParams = (): void => {
      paramRow.style.display = this.mode.value === 'papermill' ? '' : 'none';
    };
    showParams();
    this.mode.addEventListener('change', () => {
      if (this.command.value === this.prefill) {
        this.command.value = defaultCommand(this.mode.value as Mode, fileName);
      }
      this.prefill = defaultCommand(this.mode.value as Mode, fileName);
      showParams();
    });

    this.profile = el('select', { name: 'profile' });
    for (const p of data.profiles) {
      const opt = el('option', { value: p.name }, p.display_name || p.name);
      if (p.description) {
        opt.textContent += ` — ${p.description}`;
      }
      opt.selected = !!p.default || p.name === 'standard';
      this.profile.appendChild(opt);
    }
    row('Profile', this.profile);

    const box = el('div', { class: 'kqi-datasets' });
    if (!data.datasets.length) {
      box.appendChild(el('span', { class: 'kqi-hint' }, 'no datasets you may read'));
    }
    for (const d of data.datasets) {
      const item = el('label', { class: 'kqi-check' });
      const cb = el('input', { type: 'checkbox', value: d.name, name: 'dataset' });
      item.appendChild(cb);
      item.appendChild(document.createTextNode(` ${d.name}`));
      if (d.description) {
        item.title = d.description;
      }
      this.datasetBoxes.push(cb as HTMLInputElement);
      box.appendChild(item);
    }
    row('Datasets', box, 'mounted read-only at /kqi/input/<name>');

    this.parentJob = el('select', { name: 'parent' });
    this.parentJob.appendChild(el('option', { value: '' }, '(none)'));
    for (const j of data.jobs.filter(j => j.status === 'succeeded')) {
      this.parentJob.appendChild(el('option', { value: String(j.id) }, `#${j.id} ${j.name}`));
    }
    row('Parent job', this.parentJob, 'its output is mounted read-only at /kqi/parent');

    this.purpose = el('select', { name: 'purpose' });
    this.purpose.appendChild(el('option', { value: 'training' }, 'training'));
    this.purpose.appendChild(el('option', { value: 'inference' }, 'inference'));
    row('Purpose', this.purpose);

    this.env = el('textarea', { name: 'env', rows: '2', placeholder: 'SEED=1' });
    row('Environment', this.env, 'one NAME=value a line');

    this.include = el('input', { name: 'include', type: 'text', placeholder: '*' });
    row('Included files', this.include, "globs, comma separated; empty: the file's folder");

    this.timeout = el('input', { name: 'timeout', type: 'number', min: '0' });
    row('Time limit (min)', this.timeout, 'empty: none');
  }

  getValue(): ISubmission {
    const out: ISubmission = { path: this.path, mode: this.mode.value as Mode };
    if (this.name.value.trim()) {
      out.name = this.name.value.trim();
    }
    const command = this.command.value.trim();
    if (command && command !== this.prefill) {
      out.command = command;
    }
    if (out.mode === 'papermill' && this.parameters.value.trim()) {
      out.parameters = parseParameters(this.parameters.value);
    }
    if (this.profile.value) {
      out.profile = this.profile.value;
    }
    out.datasets = this.datasetBoxes.filter(b => b.checked).map(b => b.value);
    if (this.parentJob.value) {
      out.parent = Number(this.parentJob.value);
    }
    out.purpose = this.purpose.value;
    const env = parsePairs(this.env.value, 'Environment');
    if (Object.keys(env).length) {
      out.env = env;
    }
    const include = this.include.value
      .split(',')
      .map(s => s.trim())
      .filter(Boolean);
    if (include.length) {
      out.include = include;
    }
    const minutes = Number(this.timeout.value);
    if (this.timeout.value && minutes > 0) {
      out.timeout_seconds = Math.round(minutes * 60);
    }
    return out;
  }

  private prefill: string;
  private readonly name: HTMLInputElement;
  private readonly mode: HTMLSelectElement;
  private readonly command: HTMLInputElement;
  private readonly parameters: HTMLTextAreaElement;
  private readonly profile: HTMLSelectElement;
  private readonly datasetBoxes: HTMLInputElement[] = [];
  private readonly parentJob: HTMLSelectElement;
  private readonly purpose: HTMLSelectElement;
  private readonly env: HTMLTextAreaElement;
  private readonly include: HTMLInputElement;
  private readonly timeout: HTMLInputElement;
}

/**
 * Ask for the job's settings and submit `path`; resolves with the new job, or null when the
 * user cancelled or the submission was refused (the refusal is shown).
 */
export async function submitDialog(path: string): Promise<IJob | null> {
  const form = new SubmitForm(path, await catalog());
  const result = await showDialog<ISubmission>({
    title: 'Submit as job',
    body: form,
    buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Submit' })],
    focusNodeSelector: 'input[name=name]'
  });
  if (!result.button.accept) {
    return null;
  }
  let submission: ISubmission;
  try {
    submission = form.getValue();
  } catch (e) {
    await showErrorDialog('The job was not submitted', (e as Error).message);
    return null;
  }
  try {
    const job = await kqiPost<IJob>('submit', submission);
    Notification.success(`Job #${job.id} ${job.name} submitted (${job.status})`, {
      autoClose: 5000
    });
    return job;
  } catch (e) {
    await showErrorDialog('The job was not submitted', (e as Error).message);
    return null;
  }
}

export async function showErrorDialog(title: string, message: string): Promise<void> {
  const body = el('div', { class: 'kqi-error-message' }, message);
  await showDialog({
    title,
    body: new Widget({ node: body }),
    buttons: [Dialog.okButton({ label: 'Close' })]
  });
}
