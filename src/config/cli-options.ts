/**
 * The option table as yargs flags. No yargs defaults are set and yargs does not read the
 * environment, so the parsed argv holds only what the user typed and `load.ts` alone decides
 * precedence. Every flag is a string: parsing and validation happen in one place, with one kind
 * of error message (yargs' number parsing would turn `--slot 007` into 7 and `abc` into NaN).
 */
import type { Argv } from 'yargs';
import { GROUP_TITLES, OPTIONS, defaultLabel, optionsByGroup, type OptionSpec } from './options.js';

export function helpText(o: OptionSpec): string {
  const description = o.description.charAt(0).toUpperCase() + o.description.slice(1);
  const env = [o.env, ...(o.fallbacks ?? [])].join(', or ');
  const dflt = defaultLabel(o);
  return `${description} [env ${env}]${dflt === undefined || dflt === '' ? '' : ` [default: ${dflt}]`}`;
}

export function addOptions<T>(y: Argv<T>, { forHelp }: { forHelp: boolean }): Argv<T> {
  for (const [group, options] of optionsByGroup()) {
    for (const o of options) {
      // yargs renders the whole help text after starting any subcommand (in case it fails later),
      // which costs about 0.2 s of CPU for these options at every start. Hidden options are left out
      // of that rendering and parse the same, so they are described only when help was asked for.
      if (forHelp) y.option(o.name, { type: 'string', group: GROUP_TITLES[group], describe: helpText(o) });
      else y.option(o.name, { type: 'string', hidden: true });
    }
  }
  return y;
}

/** The option values the user passed as flags, keyed by option name. */
export function flagsFromArgv(argv: Readonly<Record<string, unknown>>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const o of OPTIONS) {
    const value = argv[o.name];
    if (value !== undefined) out[o.name] = value;
  }
  return out;
}
