/**
 * Unit tests of the panel's protocol code and model (no browser, no JupyterLab runtime):
 * ts-jest compiles extension/ with tsconfig.test.json. The browser tests are in tests/ui/.
 */
module.exports = {
  testEnvironment: 'node',
  roots: ['<rootDir>/extension'],
  testMatch: ['**/__tests__/**/*.test.ts'],
  setupFilesAfterEnv: ['<rootDir>/extension/__tests__/setup.ts'],
  transform: {
    '^.+\\.ts$': ['ts-jest', { tsconfig: 'tsconfig.test.json' }]
  },
  moduleFileExtensions: ['ts', 'js', 'json'],
  collectCoverageFrom: ['extension/*.ts', '!extension/index.ts'],
  coverageDirectory: 'test-artifacts/jest-coverage'
};
