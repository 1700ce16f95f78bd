// Lint rules, including the layering rules of docs/ARCHITECTURE.md:
// dependencies point inward (cli, server, dashboard -> runtime -> core -> protocol -> lib),
// and the pure layers (lib, protocol, core, storage/format) may not reach the outside world.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

const impureGlobals = ['Date', 'setTimeout', 'setInterval', 'setImmediate', 'clearTimeout',
  'clearInterval', 'process', 'performance', 'queueMicrotask', 'fetch', 'require', 'Buffer']
  .map((name) => ({ name, message: 'Pure layers take time, randomness and I/O as inputs.' }));

const pureRules = {
  'no-restricted-globals': ['error', ...impureGlobals],
  'no-restricted-properties': ['error',
    { object: 'Math', property: 'random', message: 'Use the seeded PRNG from src/lib/random.ts.' }],
  'no-restricted-syntax': ['error',
    { selector: ':function[async=true]', message: 'Pure layers are synchronous: return effects instead.' },
    { selector: 'AwaitExpression', message: 'Pure layers are synchronous: return effects instead.' }],
};

function onlyImports(allowed) {
  const patterns = [{ group: ['node:*', 'fs', 'net', 'http', 'os', 'path', 'crypto', 'child_process'],
    message: 'Pure layers may not import Node built-ins.' }];
  const layers = ['lib', 'protocol', 'core', 'storage', 'transport', 'runtime', 'server', 'manager',
    'client', 'cli', 'dashboard', 'sim'];
  for (const layer of layers) {
    if (allowed.includes(layer)) continue;
    patterns.push({ group: [`**/${layer}/*`, `../${layer}/*`, `../../${layer}/*`],
      message: `This layer may not depend on src/${layer}.` });
  }
  return { 'no-restricted-imports': ['error', { patterns }] };
}

export default tseslint.config(
  { ignores: ['node_modules/', 'dist/', 'test-output/', 'data/', 'src/dashboard/public/'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    languageOptions: { globals: { console: 'readonly', process: 'readonly', Buffer: 'readonly',
      setTimeout: 'readonly', clearTimeout: 'readonly', setInterval: 'readonly', clearInterval: 'readonly',
      setImmediate: 'readonly', URL: 'readonly', TextEncoder: 'readonly', TextDecoder: 'readonly',
      performance: 'readonly', AbortController: 'readonly', fetch: 'readonly', queueMicrotask: 'readonly' } },
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      '@typescript-eslint/consistent-type-imports': 'error',
      'eqeqeq': ['error', 'always'],
      'no-constant-condition': ['error', { checkLoops: false }],
    },
  },
  { files: ['src/lib/**/*.ts'], ignores: ['**/*.test.ts'], rules: { ...pureRules, ...onlyImports(['lib']) } },
  { files: ['src/protocol/**/*.ts'], ignores: ['**/*.test.ts'], rules: { ...pureRules, ...onlyImports(['lib', 'protocol']) } },
  { files: ['src/core/**/*.ts'], ignores: ['**/*.test.ts'], rules: { ...pureRules, ...onlyImports(['lib', 'protocol', 'core']) } },
  { files: ['src/transport/framing.ts', 'src/transport/hello.ts'], rules: { ...pureRules, ...onlyImports(['lib', 'protocol', 'transport']) } },
  { files: ['src/server/http-api.ts', 'src/server/wire-api.ts'], rules: { ...pureRules, ...onlyImports(['lib', 'protocol', 'server']) } },
  { files: ['src/storage/backup-format.ts'], rules: { ...pureRules, ...onlyImports(['lib', 'protocol', 'core', 'storage']) } },
  { files: ['src/storage/log-format.ts'], rules: { ...pureRules, ...onlyImports(['lib', 'protocol', 'storage']) } },
  { files: ['src/sim/**/*.ts'], ignores: ['src/sim/main.ts', '**/*.test.ts'],
    rules: { ...pureRules, ...onlyImports(['lib', 'protocol', 'core', 'sim']) } },
);
