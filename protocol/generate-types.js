/**
 * Writes extension/protocol-types.ts: the TypeScript types of protocol/schema.json, the one
 * definition of the protocol. Run before tsc and jest (`jlpm build:protocol`); the output is
 * not committed, so it cannot drift from the schema.
 *
 * json-schema-to-typescript emits the types reachable from the root; the root here is a
 * wrapper that also reaches the lists (kinds, metric names) the panel reads as types.
 */
const fs = require('fs');
const path = require('path');
const { compile } = require('json-schema-to-typescript');

const root = path.resolve(__dirname, '..');
const schema = JSON.parse(fs.readFileSync(path.join(__dirname, 'schema.json'), 'utf-8'));
const LISTS = ['kind', 'request_kind', 'reply_kind', 'layer_metric', 'heatmap_metric', 'of', 'severity'];

const wrapper = {
  title: 'Protocol',
  description: 'Every type of protocol/schema.json (this wrapper exists only to reach them all).',
  type: 'object',
  additionalProperties: false,
  required: ['message', ...LISTS],
  properties: {
    message: { $ref: '#/definitions/message' },
    ...Object.fromEntries(LISTS.map(name => [name, { $ref: `#/definitions/${name}` }]))
  },
  definitions: {
    ...schema.definitions,
    message: { title: 'Message', description: schema.description, oneOf: schema.oneOf }
  }
};

const banner = '/* Generated from protocol/schema.json by protocol/generate-types.js: do not edit. */';
compile(wrapper, 'Protocol', {
  bannerComment: banner,
  additionalProperties: false,
  maxItems: -1,
  strictIndexSignatures: false,
  style: { printWidth: 120, singleQuote: true, trailingComma: 'none', arrowParens: 'avoid' }
}).then(ts => fs.writeFileSync(path.join(root, 'extension', 'protocol-types.ts'), ts));
