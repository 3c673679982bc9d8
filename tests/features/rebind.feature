Feature: Rebinding a replica drains the old adapter
  An orchestrator reloads a replica (a new engine build, a new address) by binding its key
  again. The new adapter takes every new task at once; the old one keeps serving the streams
  it has until they end, for at most the drain timeout, and is then closed.

  Background:
    Given a pool "chat" with one replica "gpu-0" on the server "old"
    And a second server "new" serving the same model
    And the drain timeout is 5 seconds

  Scenario: A stream running at the rebind finishes on the old server; new tasks go to the new one
    Given the server "old" streams its tokens slowly
    When task "t-old" is submitted
    And task "t-old" has received 1 token
    And "gpu-0" is rebound to the server "new"
    And task "t-new" is submitted and read to its end
    And task "t-old" is read to its end
    Then task "t-old" streams Started, its tokens in order, Metrics and End "stop"
    And task "t-new" streams Started, its tokens in order, Metrics and End "stop"
    And task "t-new" is served by "gpu-0"
    And the server "old" received only task "t-old"
    And the server "new" received only task "t-new"
    And the old adapter has closed its connections to the server "old"

  Scenario: A stream still running when the drain timeout passes is ended
    Given the server "old" streams 2 tokens and then waits
    When task "t-slow" is submitted
    And task "t-slow" has received 2 tokens
    And "gpu-0" is rebound to the server "new"
    And task "t-slow" is read to its end
    Then task "t-slow" ends once the drain timeout has passed, not before
    And task "t-slow" streams Started, 2 tokens, Metrics and End error "POOL_UNAVAILABLE", retryable, saying "rebound"
    And the server "old" sees its client go away
